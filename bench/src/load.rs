//! The senders: JetStream publishing with many PubAcks outstanding, so that the publisher is not
//! what limits a measurement. One [`Publisher`] is one connection (or, in the secured phase, one
//! per sender, each with its own credentials); it publishes 256-byte time-stamped intents from
//! random senders to random agents on a [`Route`].
//!
//! [`Pace`] says how fast: closed-loop (as fast as the deliverer keeps up, with a bounded backlog
//! so that a fast publisher does not steal the CPU the deliverer needs on two cores), at a fixed
//! rate, a fixed count, or one intent per agent.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::access::Access;
use crate::agents::Agents;
use crate::traffic::{self, Pairs, Route};

/// How fast to publish.
#[derive(Clone, Copy)]
pub enum Pace<'a> {
    /// At most `backlog` intents published and not yet received by `agents`.
    Closed { agents: &'a Agents, backlog: u64 },
    /// A fixed rate, intents per second.
    Rate { per_s: f64 },
    /// Exactly `n` intents, as fast as the PubAck window allows.
    Count { n: u64 },
    /// One intent to each of the first `n` agents, in order.
    EachAgent { n: usize },
}

/// What a publishing run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Intents handed to the connection.
    pub published: u64,
    /// Intents JetStream acknowledged (stored).
    pub stored: u64,
    /// Publishes or PubAcks that failed.
    pub failed: u64,
    pub elapsed: Duration,
}

impl Sent {
    /// Stored intents per second over the run.
    pub fn rate(&self) -> f64 {
        self.stored as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One publishing connection for all senders, or one per sender ([`Publisher::connect_each`]).
pub struct Publisher {
    /// One context for every sender, or sender `i`'s at index `i`.
    js: Vec<jetstream::Context>,
    route: Route,
    senders: usize,
    payload: usize,
    window: usize,
    pairs: Pairs,
}

impl Publisher {
    /// Connects a publisher for `agents` agents on `route`.
    pub async fn connect(
        url: &str,
        route: Route,
        params: &crate::Params,
        agents: usize,
        seed: u64,
    ) -> anyhow::Result<Publisher> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("mesh-bench publisher ({})", route.name()))
            .connect(url)
            .await
            .with_context(|| format!("publisher cannot connect to {url}"))?;
        Ok(Self::with(
            vec![context(client, params)],
            route,
            params,
            agents,
            seed,
        ))
    }

    /// Like [`Publisher::connect`], with a connection of its own per sender, made with
    /// [`Access::client`]: its credentials when secured, its inbox prefix (where its PubAcks
    /// arrive).
    pub async fn connect_each(
        url: &str,
        access: &Access,
        params: &crate::Params,
        agents: usize,
        seed: u64,
    ) -> anyhow::Result<Publisher> {
        let mut js = Vec::with_capacity(params.senders);
        for i in 0..params.senders.max(1) {
            let id = traffic::sender(i);
            let client = access
                .client(&id)?
                .name(format!("mesh-bench sender {id}"))
                .connect(url)
                .await
                .with_context(|| format!("sender {id} cannot connect to {url}"))?;
            js.push(context(client, params));
        }
        Ok(Self::with(js, Route::Mesh, params, agents, seed))
    }

    fn with(
        js: Vec<jetstream::Context>,
        route: Route,
        params: &crate::Params,
        agents: usize,
        seed: u64,
    ) -> Publisher {
        Publisher {
            js,
            route,
            senders: params.senders,
            payload: params.payload,
            window: params.publish_window.max(1),
            pairs: Pairs::new(seed, params.senders, agents),
        }
    }

    /// Publishes at `pace` until `until`, until `stop` is set, or until a counted pace is done;
    /// then waits (bounded) for the PubAcks still outstanding.
    pub async fn run(&mut self, pace: Pace<'_>, until: Instant, stop: Option<&AtomicBool>) -> Sent {
        let start = Instant::now();
        let base = match pace {
            Pace::Closed { agents, .. } => agents.received(),
            _ => 0,
        };
        let mut acks = FuturesUnordered::new();
        let mut sent = Sent::default();
        let mut since_yield = 0u32;
        loop {
            while let Some(Some(ack)) = acks.next().now_or_never() {
                count(&mut sent, ack);
            }
            let now = Instant::now();
            if now >= until || stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                break;
            }
            let (done, may) = match pace {
                Pace::Closed { agents, backlog } => {
                    let delivered = agents.received().saturating_sub(base);
                    (false, sent.published.saturating_sub(delivered) < backlog)
                }
                Pace::Rate { per_s } => (
                    false,
                    (sent.published as f64) < per_s * (now - start).as_secs_f64(),
                ),
                Pace::Count { n } => (sent.published >= n, true),
                Pace::EachAgent { n } => (sent.published >= n as u64, true),
            };
            if done {
                break;
            }
            if may && acks.len() < self.window {
                let (from, to) = match pace {
                    Pace::EachAgent { .. } => {
                        let i = sent.published as usize;
                        (i % self.senders.max(1), i)
                    }
                    _ => self.pairs.next_pair(),
                };
                let subject = self.route.subject(from, to);
                let js = &self.js[from % self.js.len()];
                match js.publish(subject, traffic::payload(self.payload)).await {
                    Ok(ack) => {
                        acks.push(ack.into_future());
                        sent.published += 1;
                    }
                    Err(e) => {
                        sent.failed += 1;
                        tracing::warn!(error = %e, "publish failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                since_yield += 1;
                if since_yield >= 64 {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                }
                continue;
            }
            let wake = match pace {
                Pace::Rate { .. } if may => now + Duration::from_millis(1),
                Pace::Rate { per_s } => {
                    start + Duration::from_secs_f64((sent.published + 1) as f64 / per_s.max(1e-3))
                }
                _ => now + Duration::from_millis(1),
            };
            tokio::select! {
                Some(ack) = acks.next(), if !acks.is_empty() => count(&mut sent, ack),
                _ = tokio::time::sleep_until(wake.min(until).into()) => {}
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !acks.is_empty() {
            match tokio::time::timeout_at(deadline, acks.next()).await {
                Ok(Some(ack)) => count(&mut sent, ack),
                Ok(None) => break,
                Err(_) => {
                    sent.failed += acks.len() as u64;
                    break;
                }
            }
        }
        sent.elapsed = start.elapsed();
        sent
    }
}

/// A JetStream context that keeps many PubAcks outstanding and pushes back when it has too many.
fn context(client: async_nats::Client, params: &crate::Params) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(params.publish_window.max(1) * 2)
        .backpressure_on_inflight(true)
        .build(client)
}

fn count(
    sent: &mut Sent,
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) {
    match ack {
        Ok(_) => sent.stored += 1,
        Err(e) => {
            sent.failed += 1;
            tracing::warn!(error = %e, "PubAck failed");
        }
    }
}
