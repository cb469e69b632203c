//! The acknowledging agents: plain async-nats queue subscribers on `mesh.agent.<id>.inbox` (queue
//! group `<id>`), as the contract asks of any agent. Each counts what it receives, can time it
//! from the stamp in the payload, and replies with an empty message, which acknowledges the
//! intent for the gateway and for the baseline relay alike.
//!
//! The agents are spread over a few connections; each connection has one task that serves all
//! of its subscriptions, so that ten thousand agents do not need ten thousand tasks. The same
//! agents serve the baseline and the mesh. In the secured phase every agent has a connection of
//! its own ([`Agents::start_each`]), since its credentials let it subscribe only its own inbox.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tokio::task::JoinHandle;

use crate::access::Access;
use crate::traffic;

/// How long a round trip to the server after subscribing may take.
const ROUND_TRIP_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Counters shared by every agent task.
#[derive(Default)]
struct Counters {
    /// Deliveries received, redeliveries included.
    received: AtomicU64,
    /// Agents that received at least one delivery since [`Agents::reset_reached`].
    reached: AtomicU64,
    /// Per agent: received since the last reset.
    seen: Vec<AtomicBool>,
    /// Whether trip times are being recorded.
    timing: AtomicBool,
    /// Trip times in microseconds (publish → receipt), while `timing` is on.
    trips: Mutex<Vec<u32>>,
}

/// `n` agents, serving until dropped.
pub struct Agents {
    n: usize,
    counters: Arc<Counters>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agents {
    /// Subscribes `n` agents over `connections` connections to `url` and returns once the
    /// server has registered every subscription.
    pub async fn start(url: &str, n: usize, connections: usize) -> anyhow::Result<Agents> {
        let connections = connections.clamp(1, n.max(1));
        let mut agents = Agents::new(n);
        for c in 0..connections {
            let client = async_nats::ConnectOptions::new()
                .name(format!("mesh-bench agents {c}"))
                .connect(url)
                .await
                .with_context(|| format!("agents cannot connect to {url}"))?;
            let ids: Vec<usize> = (c..n).step_by(connections).collect();
            agents.serve(client, &ids).await?;
        }
        Ok(agents)
    }

    /// Like [`Agents::start`], with a connection of its own per agent, made with
    /// [`Access::client`]: its credentials when secured, its inbox prefix.
    pub async fn start_each(url: &str, n: usize, access: &Access) -> anyhow::Result<Agents> {
        let mut agents = Agents::new(n);
        for i in 0..n {
            let id = traffic::agent(i);
            let client = access
                .client(&id)?
                .name(format!("mesh-bench agent {id}"))
                .connect(url)
                .await
                .with_context(|| format!("agent {id} cannot connect to {url}"))?;
            agents.serve(client, &[i]).await?;
        }
        Ok(agents)
    }

    fn new(n: usize) -> Agents {
        let counters = Arc::new(Counters {
            seen: (0..n).map(|_| AtomicBool::new(false)).collect(),
            ..Default::default()
        });
        Agents {
            n,
            counters,
            tasks: Vec::new(),
        }
    }

    /// Subscribes agents `ids` on `client`, and serves them from one task once the server has
    /// registered every subscription.
    async fn serve(&mut self, client: async_nats::Client, ids: &[usize]) -> anyhow::Result<()> {
        let mut subs = Vec::new();
        for &i in ids {
            let id = traffic::agent(i);
            let sub = client
                .queue_subscribe(traffic::inbox(&id), id.clone())
                .await
                .with_context(|| format!("agent {id} cannot subscribe"))?;
            subs.push(sub.map(move |m| (i, m)));
        }
        round_trip(&client).await?;
        let counters = self.counters.clone();
        let mut merged = stream::select_all(subs);
        self.tasks.push(tokio::spawn(async move {
            while let Some((i, msg)) = merged.next().await {
                counters.note(i, &msg.payload);
                if let Some(reply) = msg.reply {
                    // A lost reply only means a redelivery; nothing to do about it here.
                    let _ = client.publish(reply, Bytes::new()).await;
                }
            }
        }));
        Ok(())
    }

    /// How many agents there are.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Deliveries received so far, redeliveries included.
    pub fn received(&self) -> u64 {
        self.counters.received.load(Ordering::Relaxed)
    }

    /// Agents that received something since the last [`Agents::reset_reached`].
    pub fn reached(&self) -> u64 {
        self.counters.reached.load(Ordering::Relaxed)
    }

    /// Starts counting reached agents from zero.
    pub fn reset_reached(&self) {
        for s in &self.counters.seen {
            s.store(false, Ordering::Relaxed);
        }
        self.counters.reached.store(0, Ordering::Relaxed);
    }

    /// Starts or stops recording trip times.
    pub fn timing(&self, on: bool) {
        self.counters.timing.store(on, Ordering::Relaxed);
    }

    /// The trip times recorded so far (microseconds); clears them.
    pub fn take_trips(&self) -> Vec<u32> {
        std::mem::take(
            &mut *self
                .counters
                .trips
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

/// A message to itself through the server on `client`'s own inbox (which even an agent of a
/// secured mesh may use): the server has then registered every SUB sent before it (flush alone
/// does not prove that).
async fn round_trip(client: &async_nats::Client) -> anyhow::Result<()> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .context("cannot subscribe to its own inbox")?;
    client
        .publish(inbox, Bytes::new())
        .await
        .context("cannot publish to its own inbox")?;
    match tokio::time::timeout(ROUND_TRIP_WITHIN, sub.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => anyhow::bail!("its own inbox subscription ended"),
        Err(_) => anyhow::bail!("no round trip through its own inbox within {ROUND_TRIP_WITHIN:?}"),
    }
}

impl Counters {
    fn note(&self, agent: usize, payload: &[u8]) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(seen) = self.seen.get(agent) {
            if !seen.swap(true, Ordering::Relaxed) {
                self.reached.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.timing.load(Ordering::Relaxed) {
            if let Some(sent) = traffic::stamp(payload) {
                let trip = traffic::now_us().saturating_sub(sent);
                self.trips
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(u32::try_from(trip).unwrap_or(u32::MAX));
            }
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
