//! Making sure the server has registered a subscription before the call that made it returns.
//!
//! `Client::flush()` only writes the client's buffer; it does not prove that the server has
//! processed the `SUB`. A request from another connection right after `subscribe()` + `flush()`
//! has been seen to get "no responders". The server handles one connection's protocol in order,
//! so an answer to any request sent after the `SUB` on the same connection proves the `SUB` is
//! registered. The request used is JetStream's account info (`$JS.API.INFO`), which every mesh
//! user may send; "no responders" is an answer from the server too and counts.

use std::time::Duration;

use async_nats::{Client, Request, RequestError, RequestErrorKind};

/// How long the server gets to answer the confirming request.
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The subject of the confirming request.
pub(crate) const CONFIRM_SUBJECT: &str = "$JS.API.INFO";

/// Returns once the server has processed everything this client sent before the call.
pub(crate) async fn confirm(client: &Client) -> Result<(), RequestError> {
    let request = Request::new().timeout(Some(CONFIRM_TIMEOUT));
    match client.send_request(CONFIRM_SUBJECT, request).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(e),
    }
}
