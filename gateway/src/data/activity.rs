//! Which agents this replica has seen on the data path, for `mesh-cli status`: a sender or a
//! recipient of an intent is listed even if it never sent a heartbeat and was never killed.
//!
//! Noting a sighting is a map update in memory (no I/O on the delivery path). A flusher writes
//! [`ActivityRecord`]s to KV bucket `mesh-activity`, key `<id>.<gateway>`: an agent seen for the
//! first time within a second, then at most once per [`INTERVAL`] while it stays active, and
//! once more after it goes quiet, so the last sighting is always written. At 10,000 active
//! agents that is at most 2,000 small writes a second per delivering replica, with at most
//! [`CONCURRENT_WRITES`] in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use mesh_schemas::{ActivityRecord, AgentId};
use tokio_util::sync::CancellationToken;

/// The shortest time between two writes of one agent's record by one replica.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// How often the flusher looks for records to write.
const TICK: Duration = Duration::from_secs(1);

/// Writes in flight at once.
const CONCURRENT_WRITES: usize = 64;

/// What this replica knows of one agent.
#[derive(Debug, Default)]
struct Seen {
    sent: Option<u64>,
    addressed: Option<u64>,
    received: Option<u64>,
    /// Changed since the last write.
    dirty: bool,
    /// When it was last written.
    written: Option<Instant>,
}

/// The agents this replica has seen, with what it has not written yet.
#[derive(Debug, Default)]
pub struct Activity {
    seen: Mutex<HashMap<AgentId, Seen>>,
}

fn later(slot: &mut Option<u64>, t: u64) -> bool {
    if slot.is_none_or(|s| s < t) {
        *slot = Some(t);
        return true;
    }
    false
}

impl Activity {
    fn note(&self, id: &AgentId, f: impl FnOnce(&mut Seen) -> bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let s = match seen.get_mut(id) {
            Some(s) => s,
            None => seen.entry(id.clone()).or_default(),
        };
        if f(s) {
            s.dirty = true;
        }
    }

    /// An intent from `from` to `to`, published at `published_unix_ms`, was taken in.
    pub fn intent(&self, from: &AgentId, to: &AgentId, published_unix_ms: u64) {
        self.note(from, |s| later(&mut s.sent, published_unix_ms));
        self.note(to, |s| later(&mut s.addressed, published_unix_ms));
    }

    /// `to` acknowledged a delivery.
    pub fn received(&self, to: &AgentId) {
        let now = mesh_schemas::now_unix_ms();
        self.note(to, |s| later(&mut s.received, now));
    }

    /// The records due now: dirty, and never written or last written `INTERVAL` ago.
    fn due(&self, gateway: &str, now: Instant) -> Vec<ActivityRecord> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (id, s) in seen.iter_mut() {
            if !s.dirty || s.written.is_some_and(|w| now.duration_since(w) < INTERVAL) {
                continue;
            }
            s.dirty = false;
            s.written = Some(now);
            let mut rec = ActivityRecord::new(id.as_str(), gateway);
            rec.last_sent_unix_ms = s.sent;
            rec.last_addressed_unix_ms = s.addressed;
            rec.last_received_unix_ms = s.received;
            out.push(rec);
        }
        out
    }

    /// Marks `agent` dirty again after a failed write, so the next tick retries it.
    fn retry(&self, agent: &str) {
        if let Ok(id) = AgentId::new(agent) {
            self.note(&id, |_| true);
        }
    }
}

/// The key of `agent`'s record written by `gateway` (characters a key may not hold become `_`).
pub fn key(agent: &str, gateway: &str) -> String {
    let gw: String = gateway
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{agent}.{gw}")
}

/// The publish timestamp of an intent, ms since the epoch (now when the message has none).
pub fn published_unix_ms(msg: &jetstream::Message) -> u64 {
    msg.info()
        .ok()
        .and_then(|i| u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).ok())
        .unwrap_or_else(mesh_schemas::now_unix_ms)
}

/// Writes due records until `cancel`, then once more.
pub async fn run(
    activity: Arc<Activity>,
    store: kv::Store,
    gateway: String,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = cancel.cancelled() => true,
        };
        flush(&activity, &store, &gateway).await;
        if stopping {
            return;
        }
    }
}

async fn flush(activity: &Activity, store: &kv::Store, gateway: &str) {
    let due = activity.due(gateway, Instant::now());
    if due.is_empty() {
        return;
    }
    futures::stream::iter(due)
        .for_each_concurrent(CONCURRENT_WRITES, |rec| async move {
            let written = match mesh_schemas::encode(&rec) {
                Ok(bytes) => store
                    .put(key(&rec.agent, gateway), bytes.into())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = written {
                tracing::debug!(agent = %rec.agent, error, "activity record not written; retrying");
                activity.retry(&rec.agent);
            }
        })
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_new_agent_is_due_at_once_then_at_most_once_per_interval() {
        let a = Activity::default();
        let (x, y) = (AgentId::new("x").unwrap(), AgentId::new("y").unwrap());
        let t0 = Instant::now();
        a.intent(&x, &y, 100);
        let due = a.due("gw", t0);
        assert_eq!(due.len(), 2, "sender and recipient");
        let xr = due.iter().find(|r| r.agent == "x").unwrap();
        assert_eq!(xr.last_sent_unix_ms, Some(100));
        assert_eq!(xr.last_addressed_unix_ms, None);
        a.intent(&x, &y, 200);
        assert!(
            a.due("gw", t0 + Duration::from_secs(1)).is_empty(),
            "within the interval"
        );
        let later = a.due("gw", t0 + INTERVAL);
        assert_eq!(
            later.len(),
            2,
            "the last sighting is written after the interval"
        );
        assert!(
            a.due("gw", t0 + INTERVAL * 3).is_empty(),
            "nothing new, nothing written"
        );
    }

    #[test]
    fn keys_hold_only_key_characters() {
        assert_eq!(key("billing", "host.1:42"), "billing.host_1_42");
    }
}
