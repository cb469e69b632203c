//! The fence of a kill or resume: which gateway replicas are live, and waiting until each has
//! confirmed (a [`FenceAck`] on `<prefix>.gw.fenced.<id>`) that it enforces the new kill-flag
//! revision.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::Subscriber;
use futures::{StreamExt, TryStreamExt};
use mesh_schemas::{AgentId, FenceAck, GatewayPresence};
use serde::Serialize;
use tokio::time::Instant;

use crate::error::CliError;

/// Every presence record in the gateways bucket that can be read, live or not.
///
/// Read from the bucket's stream leader (stream info and `STREAM.MSG.GET`), never with a KV
/// get: that is a direct get, which any replica of the bucket may answer, and a node that has
/// just come back answers from a copy that is behind. Its records look seconds old, so a kill
/// would not wait for replicas that are live and delivering.
pub async fn presences(store: &kv::Store) -> Result<Vec<GatewayPresence>, CliError> {
    let bucket = store.name.clone();
    let prefix = format!("$KV.{bucket}.");
    let subjects: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| CliError::nats(format!("could not list KV bucket {bucket}"), e))?
        .try_collect()
        .await
        .map_err(|e| CliError::nats(format!("could not list KV bucket {bucket}"), e))?;
    let mut found = Vec::with_capacity(subjects.len());
    for (subject, _) in subjects {
        let key = subject
            .strip_prefix(&prefix)
            .unwrap_or(&subject)
            .to_string();
        let msg = match store.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => msg,
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => continue,
            Err(e) => return Err(CliError::nats(format!("could not read {bucket}[{key}]"), e)),
        };
        // A deleted or purged key (a replica that stopped cleanly) is a marker without a value.
        if msg.headers.get("KV-Operation").is_some() || msg.payload.is_empty() {
            continue;
        }
        match mesh_schemas::decode::<GatewayPresence>(&msg.payload) {
            Ok(p) => found.push(p),
            Err(e) => {
                tracing::warn!(bucket = %bucket, key = %key, error = %e, "ignoring an unreadable gateway presence record")
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// The ids of the replicas that are live now.
pub async fn live_replicas(store: &kv::Store) -> Result<Vec<String>, CliError> {
    let now = mesh_schemas::now_unix_ms();
    Ok(presences(store)
        .await?
        .into_iter()
        .filter(|p| p.is_live(now))
        .map(|p| p.id)
        .collect())
}

/// How a fence ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fence {
    /// Replicas live when the fence started (listed just before the flag was written).
    pub live: Vec<String>,
    /// Replicas that confirmed (live ones, and any other that answered in time, such as one
    /// that started after the listing).
    pub confirmed: Vec<String>,
    /// Live replicas that did not confirm before the deadline.
    pub missing: Vec<String>,
    /// From the flag write to the last confirmation (or to the deadline when some are missing).
    #[serde(serialize_with = "as_ms", rename = "fence_ms")]
    pub elapsed: Duration,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(*d))
}

/// A duration in milliseconds with a fraction, as the audit trail records it.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

impl Fence {
    /// Whether every live replica confirmed.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Reads fence acknowledgements from `acks` until every replica in `live` has confirmed
/// revision `revision` (or later) of `agent`'s flag, or `deadline` passes. A confirmation from
/// a replica not in `live` is recorded in `confirmed` but is not waited for.
pub async fn wait(
    acks: &mut Subscriber,
    agent: &AgentId,
    revision: u64,
    live: Vec<String>,
    started: Instant,
    deadline: Instant,
) -> Fence {
    let mut missing: BTreeSet<String> = live.iter().cloned().collect();
    let mut confirmed: Vec<String> = Vec::new();
    let mut elapsed = started.elapsed();
    while !missing.is_empty() {
        let msg = match tokio::time::timeout_at(deadline, acks.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => {
                elapsed = started.elapsed();
                break;
            }
        };
        match mesh_schemas::decode::<FenceAck>(&msg.payload) {
            Ok(ack) if ack.agent == *agent && ack.revision >= revision => {
                missing.remove(&ack.gateway);
                if !confirmed.contains(&ack.gateway) {
                    confirmed.push(ack.gateway);
                }
                elapsed = started.elapsed();
            }
            Ok(ack) => {
                tracing::debug!(gateway = %ack.gateway, revision = ack.revision, "ignoring a fence ack for an older revision")
            }
            Err(e) => tracing::warn!(error = %e, "ignoring an unreadable fence ack"),
        }
    }
    confirmed.sort();
    Fence {
        live,
        confirmed,
        missing: missing.into_iter().collect(),
        elapsed,
    }
}
