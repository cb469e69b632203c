//! Heartbeats: a background task that publishes `<prefix>.hb.<me>` every so often, so that the
//! gateways know the agent is alive (its health) and how much it has spent (its cost).
//!
//! Each heartbeat is a core NATS message with an empty body and two headers:
//!
//! - `Mesh-Instance`: which instance of the agent is beating, so that the gateways can count the
//!   live instances;
//! - `Mesh-Cost-Total`: the cumulative cost in USD that this instance has reported with
//!   [`Heartbeat::report_cost`], as a plain decimal (`0.75`).
//!
//! The total is cumulative, so a lost heartbeat loses nothing: the next one carries it. The
//! gateways add it to the `Mesh-Cost` of the agent's intents, so a cost must be reported one way
//! or the other, never both.
//!
//! The task stops when the [`Heartbeat`] is dropped or [`Heartbeat::stop`] is called; either way
//! it sends one last heartbeat with the final total first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use mesh_schemas::headers::{MESH_COST_TOTAL, MESH_INSTANCE};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::Agent;

/// The shortest interval between heartbeats; a shorter one is raised to it.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// The longest instance id, in bytes: the gateways ignore heartbeats with a longer one, so a
/// longer id is cut to this length.
pub const MAX_INSTANCE_LEN: usize = 128;

/// A cost that cannot be added to the total.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("cost {0} is not a finite, non-negative number of USD; nothing was added")]
pub struct InvalidCost(pub f64);

/// The handle of a running heartbeat task. Dropping it stops the task.
#[derive(Debug)]
pub struct Heartbeat {
    /// The instance id in the `Mesh-Instance` header.
    instance: String,
    /// The cumulative cost in USD, as `f64` bits, shared with the task.
    total: Arc<AtomicU64>,
    /// Dropped or fired to stop the task.
    stop: Option<oneshot::Sender<()>>,
    /// The task, awaited by [`Heartbeat::stop`].
    task: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts publishing heartbeats for `instance` every `every` (the first one at once), from a
    /// background task, until the returned handle is dropped or stopped.
    ///
    /// `instance` identifies this process among the agent's instances (a host name, a pod
    /// name); an empty one is replaced by a random id, control characters by `_`, and one longer
    /// than [`MAX_INSTANCE_LEN`] bytes is cut, since it travels in a header. Heartbeats are best effort: a failed publish is logged and the next
    /// tick tries again. Must be called inside a tokio runtime.
    pub fn heartbeat(&self, instance: impl Into<String>, every: Duration) -> Heartbeat {
        let instance = header_safe(instance.into());
        let total = Arc::new(AtomicU64::new(0f64.to_bits()));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(beat(
            self.client.clone(),
            self.subjects.heartbeat(&self.id),
            instance.clone(),
            total.clone(),
            every.max(MIN_HEARTBEAT_INTERVAL),
            stopped,
        ));
        Heartbeat {
            instance,
            total,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl Heartbeat {
    /// Adds `usd` to the cumulative cost this instance reports; returns the new total. The next
    /// heartbeat carries it. Refuses a negative or non-finite amount (the total is unchanged).
    ///
    /// Report each cost once: either here or as `Mesh-Cost` on the intent
    /// ([`crate::SendOptions::cost_usd`]). The gateways add both together.
    pub fn report_cost(&self, usd: f64) -> Result<f64, InvalidCost> {
        if !usd.is_finite() || usd < 0.0 {
            return Err(InvalidCost(usd));
        }
        let previous = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                Some((f64::from_bits(bits) + usd).to_bits())
            })
            .unwrap_or_else(|bits| bits);
        Ok(f64::from_bits(previous) + usd)
    }

    /// The cumulative cost reported so far, in USD.
    pub fn cost_total(&self) -> f64 {
        f64::from_bits(self.total.load(Ordering::Acquire))
    }

    /// The instance id the heartbeats carry.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Stops the task after one last heartbeat with the final total, and waits until it has
    /// been handed to the connection.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // Dropping the sender tells the task to send its last heartbeat and end.
        self.stop.take();
    }
}

/// The task: one heartbeat per tick, and a last one when told to stop.
async fn beat(
    client: Client,
    subject: String,
    instance: String,
    total: Arc<AtomicU64>,
    every: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => send(&client, &subject, &instance, &total).await,
            _ = &mut stopped => break,
        }
    }
    send(&client, &subject, &instance, &total).await;
    if let Err(e) = client.flush().await {
        tracing::debug!(subject, error = %e, "could not flush the last heartbeat");
    }
}

async fn send(client: &Client, subject: &str, instance: &str, total: &AtomicU64) {
    let mut headers = HeaderMap::new();
    headers.insert(MESH_INSTANCE, instance);
    let cost = f64::from_bits(total.load(Ordering::Acquire));
    headers.insert(MESH_COST_TOTAL, cost.to_string().as_str());
    if let Err(e) = client
        .publish_with_headers(subject.to_string(), headers, bytes::Bytes::new())
        .await
    {
        tracing::warn!(subject, error = %e, "could not publish a heartbeat");
    }
}

/// An instance id that fits in a header value.
fn header_safe(instance: String) -> String {
    let mut cleaned = String::new();
    for c in instance.trim().chars() {
        let c = if c.is_control() { '_' } else { c };
        if cleaned.len() + c.len_utf8() > MAX_INSTANCE_LEN {
            break;
        }
        cleaned.push(c);
    }
    if cleaned.is_empty() {
        nuid::next().to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_fit_in_a_header() {
        assert_eq!(header_safe("pod-7".into()), "pod-7");
        assert_eq!(header_safe("a\r\nb".into()), "a__b");
        assert!(!header_safe("  ".into()).is_empty());
        let long = header_safe("é".repeat(100));
        assert_eq!(long.len(), MAX_INSTANCE_LEN);
        assert!(long.chars().all(|c| c == 'é'));
    }

    #[test]
    fn costs_print_as_plain_decimals() {
        // The header is parsed as a decimal: no exponent notation, even for tiny amounts.
        assert_eq!(0.0000001f64.to_string(), "0.0000001");
        assert_eq!(1e21f64.to_string(), "1000000000000000000000");
        assert_eq!(0f64.to_string(), "0");
    }
}
