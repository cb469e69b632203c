//! Connecting with `NatsConnection` to real nats-servers from mesh-testkit: URL lists and
//! failover on a three-node cluster, TLS with client certificates, user/password, token, nkey
//! and creds files.

mod auth;
mod cluster;
mod pki;
mod tls;

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;

/// Per-server connection deadline of every test.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Checks that `client` can do a request/reply round trip with itself, and that the reply
/// subject carries `inbox_prefix`.
pub async fn round_trip(client: &Client, inbox_prefix: &str) {
    let subject = format!("t.echo.{}", nuid());
    let mut sub = client.subscribe(subject.clone()).await.expect("subscribe");
    client.flush().await.expect("flush");
    let responder = client.clone();
    let echo = tokio::spawn(async move {
        let msg = sub.next().await.expect("a request");
        let reply = msg.reply.expect("a reply subject");
        responder
            .publish(reply.clone(), msg.payload)
            .await
            .expect("reply");
        reply.to_string()
    });
    let answer = tokio::time::timeout(TIMEOUT, client.request(subject, "ping".into()))
        .await
        .expect("answered in time")
        .expect("request");
    assert_eq!(&answer.payload[..], b"ping");
    let reply = echo.await.expect("responder");
    assert!(
        reply.starts_with(&format!("{inbox_prefix}.")),
        "reply subject {reply} does not use the inbox prefix {inbox_prefix}"
    );
}

fn nuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
