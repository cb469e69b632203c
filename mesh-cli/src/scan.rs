//! Reads every key of a KV bucket in one pass: an ordered consumer that delivers the last value
//! per key, instead of a key listing and one `get` per key. `status` reads its buckets this way
//! so that it stays quick at 10,000 agents (one stream read per bucket, not 10,000 round trips).

use async_nats::jetstream::consumer::{push, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;

use crate::error::CliError;

/// The latest value of every key in `store` that holds one (deleted and purged keys are left
/// out), in no particular order.
pub async fn latest(
    client: &async_nats::Client,
    store: &kv::Store,
) -> Result<Vec<(String, Bytes)>, CliError> {
    let what = || format!("could not read KV bucket {}", store.name);
    let consumer = store
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("mesh-cli status scan".to_string()),
            filter_subject: format!("{}>", store.prefix),
            replay_policy: ReplayPolicy::Instant,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| CliError::nats(what(), e))?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| CliError::nats(what(), e))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| CliError::nats(what(), e))?;
        let pending = msg.info().map(|i| i.pending).unwrap_or(0);
        let op = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .map(|v| v.as_str().to_string());
        if op.is_none() {
            if let Some(key) = msg.subject.as_str().strip_prefix(store.prefix.as_str()) {
                out.push((key.to_string(), msg.payload.clone()));
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}
