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
//! which holds them in NATS and replays them in order ([`crate::worker`]). A recipient is parked
//! when it is killed, when a delivery to it finds no responder or times out, and when more than
//! `park_backlog` intents queue up for it. While it is parked the lane acknowledges (skips) its
//! intents: its own consumer has them. When its lane has caught up, the drain publishes an
//! unpark marker into the intents stream; the shared lane meets it in stream order and, if the
//! parked consumer has acknowledged everything before the marker, deletes it and delivers the
//! recipient's later intents itself ([`crate::park`]).
//!
//! The lane is the only writer of the parked set: only the active replica parks and unparks,
//! and a replica that becomes active re-reads the set from NATS first.
//!
//! Order across a change of pin: nats-server forgets the pin when the consumer's leader changes
//! (the node leading `mesh_deliver` is lost) and pins whichever replica pulls next, while the
//! replica that had it may still hold intents it pulled. So a lane that sees a new `Nats-Pin-Id`
//! holds everything from the first sequence it got under that pin until the consumer's ack
//! floor reaches that sequence: the previous holder's intents are then delivered (and acked) or
//! back in JetStream, which redelivers them here before anything newer of their sender.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::NATS_PIN_ID;
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use mesh_schemas::headers::MESH_UNPARK_REPLY;
use mesh_schemas::{AgentId, MeshNames};
use tokio::time::Instant;

use crate::deliver::{deliver, Item, OnFailure, Outcome};
use crate::flights::Flights;
use crate::park;
use crate::setup;
use crate::worker::{check, Shared};

/// Delivered stream sequences remembered per recipient, to tell a parked consumer which of the
/// intents after its start are delivered already.
const RECENT_DONE: usize = 512;

/// A replica that saw no message for this long may have lost the pin and got it back: it
/// re-reads the parked set before it acts on the next message.
const REFRESH_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How often a lane holding intents after a change of pin reads the consumer's ack floor.
const HOLD_CHECK: Duration = Duration::from_millis(100);

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
    /// The last `Nats-Pin-Id` seen on a message: a different one means the pin changed hands.
    pin: Option<String>,
    /// The highest stream sequence received.
    highest: u64,
    /// Intents received under a new pin, not started until the previous holder's are done: one
    /// segment per pin gained, oldest first (the pin can move away and back while the lane
    /// still holds, and another replica then had the intents between two segments).
    hold: VecDeque<Hold>,
}

/// What a lane holds after it gained a pin, up to the next pin it gained.
struct Hold {
    /// The first stream sequence received under the new pin. Intents below it belonged to the
    /// previous holder; when the consumer's ack floor reaches `first - 1` they are all delivered,
    /// rejected or parked, and what is held here can start.
    first: u64,
    /// The lowest sequence held here: `first`, or for a segment of redeliveries the oldest.
    lowest: u64,
    /// A segment of older intents redelivered while holding, kept ahead of the others: they go
    /// once every intent before the oldest of them is acked.
    redelivered: bool,
    /// Intents at or after `first` (and older ones redelivered while holding), as received.
    messages: Vec<jetstream::Message>,
    since: Instant,
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
            pin: None,
            highest: 0,
            hold: VecDeque::new(),
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
                    for msg in self.hold.iter().flat_map(|h| &h.messages) {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                }
                _ = sweep.tick() => self.sweep(),
                // The ack floor moves with no event this replica could wait for (the previous
                // holder acks its own intents), so it is read while intents are held.
                _ = hold_check.tick(), if !self.hold.is_empty() => self.check_hold(consumer).await,
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

    /// A message from the shared consumer.
    async fn received(&mut self, msg: jetstream::Message) {
        let (seq, delivered) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(e) => {
                tracing::warn!(error = %e, "message without JetStream metadata; ignored");
                return;
            }
        };
        let pin = msg
            .headers
            .as_ref()
            .and_then(|h| h.get_last(NATS_PIN_ID))
            .map(|v| v.as_str().to_string());
        self.shared.metrics.saw_pin(pin.as_deref());
        if pin.is_some() && pin != self.pin {
            tracing::info!(pin = ?pin, previous = ?self.pin, first = seq, "shared consumer pinned to this replica; holding new intents until the previous holder's are acknowledged");
            self.pin = pin;
            // The new pin's first message can be a redelivery of an older intent (the new
            // leader does not know of progress acks sent to the old one): the segment starts
            // after everything this lane has seen.
            let first = seq.max(self.highest + 1);
            if self.hold.back().is_none_or(|h| h.first < first) {
                self.hold.push_back(Hold {
                    first,
                    lowest: first,
                    redelivered: false,
                    messages: Vec::new(),
                    since: Instant::now(),
                });
            }
        }
        self.highest = self.highest.max(seq);
        if self.held.contains(&seq) {
            // A redelivery of an intent this lane still holds: the held copy will be acked.
            return;
        }
        // The newest segment that starts at or before this sequence. Below the first one, while
        // holding: an older intent redelivered (handed back, or its ack wait ran out at the new
        // leader) that the previous holder may also still hold; it waits in the oldest segment
        // until every intent before it is acked.
        if let Some(hold) = self.hold.iter_mut().rev().find(|h| h.first <= seq) {
            hold.messages.push(msg);
            self.total += 1;
            return;
        }
        if !self.hold.is_empty() {
            match self.hold.front_mut() {
                Some(hold) if hold.redelivered => hold.lowest = hold.lowest.min(seq),
                _ => self.hold.push_front(Hold {
                    first: seq,
                    lowest: seq,
                    redelivered: true,
                    messages: Vec::new(),
                    since: Instant::now(),
                }),
            }
            if let Some(hold) = self.hold.front_mut() {
                hold.messages.push(msg);
                self.total += 1;
            }
            return;
        }
        self.admit(msg, seq, delivered).await;
    }

    /// Reads the consumer's ack floor; releases the held intents once it has reached them.
    async fn check_hold(&mut self, consumer: &PullConsumer) {
        let Some(first) = self.hold.front().map(|h| h.lowest) else {
            return;
        };
        let floor = match consumer.get_info().await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the shared consumer's ack floor; holding");
                return;
            }
        };
        if floor + 1 < first {
            return;
        }
        // One segment at a time: the next one waits for this one's intents to be acked, and for
        // those another replica had between the two.
        let Some(hold) = self.hold.pop_front() else {
            return;
        };
        tracing::info!(
            first,
            floor,
            held = hold.messages.len(),
            waited_ms = hold.since.elapsed().as_millis() as u64,
            "previous pin holder's intents acknowledged; delivering"
        );
        // The previous holder may have parked or unparked recipients meanwhile.
        self.parked_known = false;
        let mut messages = hold.messages;
        messages.sort_by_key(|m| m.info().map(|i| i.stream_sequence).unwrap_or(0));
        self.total -= messages.len();
        for msg in messages {
            let (seq, delivered) = match msg.info() {
                Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
                Err(_) => continue,
            };
            self.admit(msg, seq, delivered).await;
        }
    }

    /// A message this lane may act on now.
    async fn admit(&mut self, msg: jetstream::Message, seq: u64, delivered: u32) {
        if self.last_message.elapsed() >= REFRESH_AFTER_IDLE {
            self.parked_known = false;
        }
        self.last_message = Instant::now();
        if !self.parked_known {
            if let Err(e) = self.read_parked().await {
                // Without the parked set the lane could deliver a parked recipient's intent
                // twice or out of order: leave the message to come back.
                tracing::warn!(error = %e, "cannot list parked recipients; retrying");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
                return;
            }
        }
        if self.held.contains(&seq) {
            // A redelivery of an intent this lane still holds: the held copy will be acked.
            return;
        }
        let shared = self.shared.clone();
        if let Some(raw) = shared.subjects.parse_unpark_marker(msg.subject.as_str()) {
            if let Some(reply) = msg.headers.as_ref().and_then(|h| h.get(MESH_UNPARK_REPLY)) {
                let reply = reply.as_str().to_string();
                if let Ok(to) = AgentId::new(raw) {
                    self.unpark(&to, seq, &reply).await;
                }
                let _ = msg.ack().await;
                return;
            }
        }
        let (to, from, action, intent_id, cost) = match check(&shared, &msg, seq) {
            Ok(parsed) => parsed,
            Err((from, refusal, id)) => {
                if let Err(e) = shared
                    .rejector
                    .reject(&msg, from.as_ref(), &id, seq, &refusal)
                    .await
                {
                    tracing::warn!(error = %e, seq, "rejection not recorded; the intent will come back");
                }
                return;
            }
        };
        if self.parked.contains(&to) {
            // Its own consumer has this intent.
            let _ = msg.ack().await;
            return;
        }
        let item = Item {
            msg,
            seq,
            delivered,
            from: from.clone(),
            to: to.clone(),
            action,
            intent_id,
            cost,
            admitted: false,
        };
        self.held.insert(seq);
        self.total += 1;
        let killed = shared.gates.get(&to).is_killed();
        let r = self.recipients.entry(to.clone()).or_default();
        if killed && !r.parking {
            r.parking = true;
            self.parking.insert(to.clone());
        }
        if r.parking || r.busy.contains(&from) {
            r.queues.entry(from).or_default().push_back(item);
            r.queued += 1;
            if r.queued > shared.cfg.park_backlog && !r.parking {
                tracing::info!(%to, queued = r.queued, "recipient backlogged; parking it");
                r.parking = true;
                self.parking.insert(to.clone());
            }
        } else {
            r.busy.insert(from);
            start(&shared, &mut self.flights, item);
        }
    }

    /// A delivery ended.
    fn finished(&mut self, to: AgentId, from: AgentId, seq: u64, outcome: Outcome) {
        let back = match outcome {
            Outcome::Done => {
                self.held.remove(&seq);
                self.total -= 1;
                None
            }
            Outcome::HandBack(item) | Outcome::Unreachable(item) => Some(item),
        };
        let Some(r) = self.recipients.get_mut(&to) else {
            return;
        };
        match back {
            None => {
                r.recent_done.push_back(seq);
                if r.recent_done.len() > RECENT_DONE {
                    r.recent_done.pop_front();
                }
            }
            Some(item) => {
                // Back to the head of its sender's queue (it is the oldest), and park the
                // recipient: it is killed, or did not answer.
                r.queues.entry(from.clone()).or_default().push_front(*item);
                r.queued += 1;
                r.parking = true;
                self.parking.insert(to.clone());
            }
        }
        let next = if r.parking || self.shared.cancel.is_cancelled() {
            None
        } else {
            r.queues.get_mut(&from).and_then(VecDeque::pop_front)
        };
        if r.queues.get(&from).is_some_and(VecDeque::is_empty) {
            r.queues.remove(&from);
        }
        match next {
            Some(item) => {
                r.queued -= 1;
                start(&self.shared, &mut self.flights, item);
            }
            None => {
                r.busy.remove(&from);
                // Nothing queued: later intents start after everything delivered, so its
                // delivered sequences need not be remembered any more.
                if r.idle() && !r.parking {
                    self.recipients.remove(&to);
                }
            }
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

    /// Parks every recipient that asked for it and has nothing in flight any more.
    async fn park_ready(&mut self) {
        if Instant::now() < self.park_retry_at {
            return;
        }
        if self.parking.is_empty() {
            return;
        }
        let ready: Vec<AgentId> = self
            .parking
            .iter()
            .filter(|to| self.recipients.get(*to).is_none_or(|r| r.busy.is_empty()))
            .cloned()
            .collect();
        for to in ready {
            self.parking.remove(&to);
            let Some(mut r) = self.recipients.remove(&to) else {
                continue;
            };
            let mut items: Vec<Item> = r.queues.drain().flat_map(|(_, q)| q).collect();
            if items.is_empty() {
                continue;
            }
            items.sort_by_key(|i| i.seq);
            let start = items[0].seq;
            let skip: Vec<u64> = r
                .recent_done
                .iter()
                .copied()
                .filter(|s| *s > start)
                .collect();
            match park::park(&self.shared, &to, start, &skip).await {
                Ok(()) => {
                    for item in &items {
                        let _ = item.msg.ack().await;
                        self.held.remove(&item.seq);
                    }
                    self.total -= items.len();
                    self.parked.insert(to.clone());
                    tracing::info!(%to, start, intents = items.len(), "recipient parked");
                }
                Err(e) => {
                    tracing::warn!(%to, error = %e, source = ?std::error::Error::source(&e), "could not park a recipient; retrying");
                    r.queued = items.len();
                    for item in items {
                        r.queues
                            .entry(item.from.clone())
                            .or_default()
                            .push_back(item);
                    }
                    self.parking.insert(to.clone());
                    self.recipients.insert(to, r);
                    self.park_retry_at = Instant::now() + Duration::from_secs(1);
                    return;
                }
            }
        }
    }

    /// Reads the parked set (the `in_*` consumers) from NATS.
    async fn read_parked(&mut self) -> Result<(), setup::SetupError> {
        let set =
            setup::parked_recipients(&self.shared.objects.intents, &self.shared.cfg.names).await?;
        self.parked = set;
        self.parked_known = true;
        Ok(())
    }

    /// An unpark marker for `to` at stream sequence `seq`.
    async fn unpark(&mut self, to: &AgentId, seq: u64, reply: &str) {
        if !self.parked.contains(to) {
            // A replica that delivered while another still held the pin (a change of pin) may
            // not know of a recipient the other parked meanwhile. Accepting the marker without
            // deleting `in_<to>` would end its drain while the consumer stays, and this lane
            // would skip the recipient's intents once it read the parked set again.
            if let Err(e) = self.read_parked().await {
                tracing::warn!(%to, error = %e, "cannot list parked recipients; declining an unpark marker");
                answer_unpark(&self.shared.client, reply, seq, false).await;
                return;
            }
        }
        let accepted = if self.parked.contains(to) {
            match park::try_unpark(&self.shared, to, seq).await {
                Ok(true) => {
                    self.parked.remove(to);
                    tracing::info!(%to, marker = seq, "recipient unparked");
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(%to, error = %e, "could not check an unpark marker");
                    false
                }
            }
        } else {
            // Unparked already (a marker sent again): the drain may end.
            true
        };
        answer_unpark(&self.shared.client, reply, seq, accepted).await;
    }

    /// A clean stop: hands everything back in order and passes the pin on at once, so that a
    /// standby (or the next process) delivers without waiting out the pin timeout.
    ///
    /// Releasing the pin is only safe when nothing can still be on its way to this replica: a
    /// message delivered into a subscription that is then dropped would come back only after the
    /// ack wait, behind newer intents of its sender. So the shared consumer is paused first (for
    /// a bounded time, in case this process dies here), whatever had arrived is collected and
    /// handed back with the rest, lowest sequence first, and only then is the pin released and
    /// the consumer resumed. If the pause fails, the pin is kept (the successor waits for it).
    async fn step_down(&mut self, mut messages: jetstream::consumer::pull::Stream) {
        let stream = self.shared.objects.intents.clone();
        let name = self.shared.cfg.names.delivery_consumer();
        let paused = stream
            .pause_consumer(&name, time::OffsetDateTime::now_utc() + STEP_DOWN_PAUSE)
            .await
            .is_ok();
        let mut late = Vec::new();
        if paused {
            while let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(100), messages.next()).await
            {
                if let Ok(msg) = msg {
                    late.push(msg);
                }
            }
        }
        let mut handed = self.hand_back_items().await;
        for msg in late {
            let Ok(info) = msg.info() else { continue };
            let seq = info.stream_sequence;
            if !self.held.contains(&seq) {
                handed.push((seq, msg));
            }
        }
        handed.sort_by_key(|(seq, _)| *seq);
        for (_, msg) in &handed {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
        self.held.clear();
        self.total = 0;
        drop(messages);
        if paused {
            let _ = self.shared.client.flush().await;
            if let Err(e) = stream
                .unpin_consumer(&name, MeshNames::PRIORITY_GROUP)
                .await
            {
                tracing::debug!(error = %e, "could not release the shared consumer's pin");
            }
            if let Err(e) = stream.resume_consumer(&name).await {
                tracing::warn!(error = %e, "could not resume the shared consumer after stepping down; it resumes by itself");
            }
            tracing::info!(
                handed_back = handed.len(),
                "stepped down: intents handed back in order, pin released"
            );
        }
    }

    /// Waits for deliveries in flight, then NAKs everything queued, lowest sequence first, so that
    /// JetStream redelivers it in the original order.
    async fn hand_back(&mut self) {
        let mut all = self.hand_back_items().await;
        all.sort_by_key(|(seq, _)| *seq);
        for (_, msg) in &all {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
        self.held.clear();
        self.total = 0;
    }

    /// Waits for deliveries in flight; returns every intent in memory with its sequence.
    async fn hand_back_items(&mut self) -> Vec<(u64, jetstream::Message)> {
        let mut all: Vec<Item> = Vec::new();
        while let Some((_, _, _, outcome)) = self.flights.next().await {
            if let Outcome::HandBack(item) | Outcome::Unreachable(item) = outcome {
                all.push(*item);
            }
        }
        for (_, mut r) in self.recipients.drain() {
            all.extend(r.queues.drain().flat_map(|(_, q)| q));
        }
        self.parking.clear();
        let mut out: Vec<(u64, jetstream::Message)> =
            all.into_iter().map(|i| (i.seq, i.msg)).collect();
        for hold in self.hold.drain(..) {
            for msg in hold.messages {
                if let Ok(info) = msg.info() {
                    out.push((info.stream_sequence, msg));
                }
            }
        }
        out
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

/// Answers an unpark marker on its reply subject.
async fn answer_unpark(client: &async_nats::Client, reply: &str, seq: u64, accepted: bool) {
    let answer = if accepted { "accepted" } else { "declined" };
    if let Err(e) = client
        .publish(reply.to_string(), format!("{answer} {seq}").into())
        .await
    {
        tracing::debug!(error = %e, "could not answer an unpark marker");
    }
}
