//! Making sure the server has registered a subscription before the call that made it returns.
//!
//! `Client::flush()` only writes the client's buffer; it does not prove that the server has
//! processed the `SUB`. A request from another connection right after `subscribe()` + `flush()`
//! has been seen to get "no responders". The server handles one connection's protocol in order,
//! so a message this client publishes to itself after the `SUB`, and receives back, proves the
//! `SUB` is registered. It goes to a fresh subject under the client's own inbox prefix, the one
//! subject space an agent may both publish and subscribe to in a secured mesh.

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;

/// How long the echo may take.
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server's view could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("could not subscribe to its own inbox {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error("could not publish to its own inbox {subject}: {source}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::PublishError,
    },
    #[error(
        "the server did not echo a message to {subject} within {}s; is the agent's inbox prefix \
         (`_INBOX_<id>` in a secured mesh) allowed for its credentials?",
        CONFIRM_TIMEOUT.as_secs()
    )]
    Timeout { subject: String },
}

/// Returns once the server has processed everything this client sent before the call.
pub(crate) async fn confirm(client: &Client) -> Result<(), ConfirmError> {
    let subject = client.new_inbox();
    let mut echo =
        client
            .subscribe(subject.clone())
            .await
            .map_err(|source| ConfirmError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
    client
        .publish(subject.clone(), bytes::Bytes::new())
        .await
        .map_err(|source| ConfirmError::Publish {
            subject: subject.clone(),
            source,
        })?;
    let got = tokio::time::timeout(CONFIRM_TIMEOUT, echo.next()).await;
    let _ = echo.unsubscribe().await;
    match got {
        Ok(Some(_)) => Ok(()),
        _ => Err(ConfirmError::Timeout { subject }),
    }
}
