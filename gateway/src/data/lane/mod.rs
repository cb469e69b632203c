//! The shared delivery lane: one durable pull consumer over the whole intents stream, pinned to
//! one replica at a time (the active replica), delivers every intent whose recipient is not
//! parked.
//!
//! One consumer instead of one per recipient is what makes the mesh cost about what NATS costs:
//! nats-server serves one consumer in large batches, where a consumer per recipient made it search
//! a filtered subject index per message and rewrite thousands of consumer state files.
//!
//! Order per sender: the lane sees the stream in order and keeps, per recipient, one queue per
//! sender with one delivery in flight. A recipient that cannot take its work now is *parked*:
//! its queued intents move (by stream sequence) to a durable consumer of its own, `in_<id>`,
//! which holds them in NATS and replays them in order ([`crate::data::drain`]). A recipient is parked
//! when it is killed, when a delivery to it finds no responder or times out, and when more than
//! `park_backlog` intents queue up for it. While it is parked the lane acknowledges (skips) its
//! intents: its own consumer has them. When its lane has caught up, the drain publishes an
//! unpark marker into the intents stream; the shared lane meets it in stream order and, if the
//! parked consumer has acknowledged everything before the marker, deletes it and delivers the
//! recipient's later intents itself ([`crate::data::park`]).
//!
//! The lane is the only writer of the parked set: only the active replica parks and unparks,
//! and a replica that becomes active re-reads the set from NATS first.
//!
//! Order across a change of pin: nats-server forgets the pin when the consumer's leader changes
//! (the node leading `mesh_deliver` is lost) and pins whichever replica pulls next, while the
//! replica that had it may still hold intents it pulled. So a lane that sees a new `Nats-Pin-Id`
//! holds everything from the first sequence it got under that pin until the previous holder's
//! intents are delivered (and acked) or back in JetStream ([`crate::data::pin_hold`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use mesh_schemas::headers::MESH_UNPARK_REPLY;
use mesh_schemas::{AgentId, MeshNames};
use tokio::time::Instant;

use crate::data::deliver::{deliver, Item, OnFailure, Outcome};
use crate::data::drain::check;
use crate::data::flights::Flights;
use crate::data::park;
use crate::data::pin_hold::{Floor, PinHold, HOLD_CHECK};
use crate::setup;
use crate::shared::Shared;

mod handover;
mod parking;
mod receive;

/// Delivered stream sequences remembered per recipient, to tell a parked consumer which of the
/// intents after its start are delivered already.
const RECENT_DONE: usize = 512;

/// A replica that saw no message for this long may have lost the pin and got it back: it
/// re-reads the parked set before it acts on the next message.
const REFRESH_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How long a stepping-down replica pauses the shared consumer at most (it resumes it itself
/// after a few milliseconds; this bounds the pause if the process dies in between).
const STEP_DOWN_PAUSE: Duration = Duration::from_secs(5);

/// Runs the lane until the gateway stops.
pub async fn run(shared: Arc<Shared>) {
    let consumer = loop {
        match setup::ensure_delivery_consumer(&shared.objects.intents, &shared.cfg).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot get the shared delivery consumer; retrying");
                if shared.pause(Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    };
    // Deliveries a stopped replica left unacknowledged come back only after the ack wait; start
    // after them so that they are not overtaken by newer intents of the same sender.
    if let Ok(info) = consumer.get_info().await {
        if info.num_ack_pending > 0 {
            tracing::info!(
                unacked = info.num_ack_pending,
                "waiting for unacknowledged deliveries of another replica to return"
            );
            if shared
                .pause(shared.cfg.ack_wait + Duration::from_secs(1))
                .await
            {
                return;
            }
        }
    }
    let mut lane = Lane::new(shared.clone());
    let mut backoff = Duration::from_millis(100);
    loop {
        match lane.follow(&consumer).await {
            Ended::Cancelled => return,
            Ended::Stream(why) => {
                tracing::warn!(why, "shared delivery subscription ended; reopening");
                if shared.pause(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum Ended {
    Cancelled,
    Stream(String),
}

/// A finished delivery: recipient, sender, stream sequence, outcome.
type Done = (AgentId, AgentId, u64, Outcome);

/// One recipient's work in the lane.
#[derive(Default)]
struct Recipient {
    /// Intents waiting behind the one in flight of the same sender.
    queues: HashMap<AgentId, VecDeque<Item>>,
    /// Senders with a delivery in flight.
    busy: HashSet<AgentId>,
    queued: usize,
    /// Stream sequences of its last deliveries (and rejections), newest last.
    recent_done: VecDeque<u64>,
    /// Parking asked for: start nothing new; park once nothing is in flight.
    parking: bool,
}

impl Recipient {
    fn idle(&self) -> bool {
        self.busy.is_empty() && self.queued == 0
    }
}

struct Lane {
    shared: Arc<Shared>,
    recipients: HashMap<AgentId, Recipient>,
    /// Recipients with a consumer of their own; the lane skips their intents.
    parked: HashSet<AgentId>,
    /// Recipients asked to park (their `parking` flag), so that looking for the ones ready to
    /// park costs nothing per message when there are thousands of recipients.
    parking: HashSet<AgentId>,
    /// Whether `parked` was read from NATS since this replica last became active.
    parked_known: bool,
    /// Stream sequences in memory (queued or in flight), to drop JetStream redeliveries.
    held: HashSet<u64>,
    flights: Flights<Done>,
    /// Intents in memory.
    total: usize,
    last_message: Instant,
    /// No parking attempt before this (after a failed one).
    park_retry_at: Instant,
    /// Intents received under a new pin, not started until the previous holder's are done.
    hold: PinHold,
}

impl Lane {
    fn new(shared: Arc<Shared>) -> Self {
        Lane {
            shared,
            recipients: HashMap::new(),
            parked: HashSet::new(),
            parking: HashSet::new(),
            parked_known: false,
            held: HashSet::new(),
            flights: Flights::default(),
            total: 0,
            last_message: Instant::now(),
            park_retry_at: Instant::now(),
            hold: PinHold::for_whole_stream(),
        }
    }

    async fn follow(&mut self, consumer: &PullConsumer) -> Ended {
        let cfg = self.shared.cfg.clone();
        let batch = usize::try_from(cfg.delivery_max_ack_pending)
            .unwrap_or(1024)
            .clamp(1, 1024);
        // Expiry well inside the pin timeout, so that the pin never lapses while this replica
        // is alive.
        let expires =
            (cfg.pin_timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let mut messages = match consumer
            .stream()
            .group(MeshNames::PRIORITY_GROUP)
            .max_messages_per_batch(batch)
            .expires(expires)
            .heartbeat(expires / 2)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => return Ended::Stream(e.to_string()),
        };
        let limit = usize::try_from(cfg.delivery_max_ack_pending).unwrap_or(usize::MAX);
        let mut progress = tokio::time::interval(cfg.ack_wait / 3);
        progress.tick().await;
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hold_check = tokio::time::interval(HOLD_CHECK);
        hold_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shared.cancel.cancelled() => {
                    self.step_down(messages).await;
                    return Ended::Cancelled;
                }
                Some((to, from, seq, outcome)) = self.flights.next(), if !self.flights.is_empty() => {
                    self.finished(to, from, seq, outcome);
                }
                _ = progress.tick() => {
                    for r in self.recipients.values() {
                        for item in r.queues.values().flatten() {
                            let _ = item.msg.ack_with(AckKind::Progress).await;
                        }
                    }
                    for msg in self.hold.messages() {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                }
                _ = sweep.tick() => self.sweep(),
                // The ack floor moves with no event this replica could wait for (the previous
                // holder acks its own intents), so it is read while intents are held.
                _ = hold_check.tick(), if !self.hold.is_empty() => {
                    let released = self.hold.release(consumer, Floor::Whole, &self.held).await;
                    self.released(released).await;
                }
                msg = messages.next(), if self.total < limit => {
                    match msg {
                        None => {
                            self.hand_back().await;
                            return Ended::Stream("subscription closed".into());
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "shared delivery subscription reported an error");
                        }
                        Some(Ok(msg)) => self.received(msg).await,
                    }
                }
            }
            if self.total >= limit {
                self.relieve();
            }
            self.park_ready().await;
        }
    }

    /// The lane holds as much as it may: park the recipient with the most queued work, so that
    /// work for recipients that are slow (but under `park_backlog` each), or from senders that a
    /// rate limit holds back, moves to consumers of their own instead of stalling everyone.
    fn relieve(&mut self) {
        if !self.parking.is_empty() {
            return;
        }
        if let Some((to, r)) = self
            .recipients
            .iter_mut()
            .filter(|(_, r)| r.queued > 0)
            .max_by_key(|(_, r)| r.queued)
        {
            tracing::info!(%to, queued = r.queued, "shared lane full; parking its largest queue");
            r.parking = true;
            self.parking.insert(to.clone());
        }
    }

    /// Asks to park every recipient with queued work that is killed now.
    fn sweep(&mut self) {
        for (to, r) in self.recipients.iter_mut() {
            if r.queued > 0 && !r.parking && self.shared.gates.get(to).is_killed() {
                r.parking = true;
                self.parking.insert(to.clone());
            }
        }
    }
}

fn start(shared: &Arc<Shared>, flights: &mut Flights<Done>, item: Item) {
    let from_gate = shared.gates.get(&item.from);
    let to_gate = shared.gates.get(&item.to);
    let (to, from, seq) = (item.to.clone(), item.from.clone(), item.seq);
    let shared = shared.clone();
    flights.spawn(async move {
        let outcome = deliver(shared, item, from_gate, to_gate, OnFailure::GiveBack).await;
        (to, from, seq, outcome)
    });
}
