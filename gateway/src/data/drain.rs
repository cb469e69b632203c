//! The drain of a parked recipient: every replica runs one per parked recipient's consumer
//! `in_<id>` (pinned, so one replica at a time receives), keeps one delivery in flight per sender
//! (so order per sender holds), retries in place while the recipient does not answer, holds the
//! work while it is killed, and, once it has caught up, asks the shared lane to take the
//! recipient back with an unpark marker ([`crate::data::lane`], [`crate::data::park`]).
//!
//! The marker protocol: the drain publishes a marker into the intents stream (stream sequence
//! `K`) and delivers nothing at or after `K` until the shared lane answers. The lane accepts when
//! every intent before `K` is acknowledged and none is stored after `K` yet (it then deletes the
//! consumer and delivers what follows `K` itself), and declines otherwise; after a decline the
//! drain goes on and tries again when it has caught up, [`MARKER_RETRY`] later at the earliest.
//!
//! Order across a change of pin: the consumer's pin is forgotten when its leader changes, and
//! the replica that had it may still be delivering older intents while another receives newer
//! ones; a drain holds what it receives under a new pin until those are done
//! ([`crate::data::pin_hold`]).
//!
//! A worker keeps its pull subscription open while its recipient is killed: the consumer is
//! paused, so nothing arrives, and whatever was already on its way is handed back in order.
//! Dropping the subscription instead would strand those messages until their ack wait expired,
//! and they would then arrive after newer ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use mesh_schemas::headers::{intent_id, parse_cost, MESH_COST, MESH_UNPARK_REPLY, NATS_MSG_ID};
use mesh_schemas::{AgentId, MeshNames};

use crate::control::gate::{Gate, GateState};
use crate::data::deliver::{deliver, Item, OnFailure, Outcome};
use crate::data::flights::Flights;
use crate::data::pin_hold::{Floor, PinHold, HOLD_CHECK};
use crate::data::reject::Refusal;
use crate::setup;
use crate::shared::Shared;

/// Starts a worker for `to` unless one runs already.
pub fn spawn(shared: &Arc<Shared>, to: AgentId) {
    let fresh = shared
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(to.clone());
    if fresh {
        let task_shared = shared.clone();
        shared.tracker.spawn(async move {
            let shared = task_shared;
            run(shared.clone(), to.clone()).await;
            shared
                .workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&to);
            // A fence that saw this worker alive waits for it to mark the kill drained. A
            // worker that ends (unparked, consumer gone, subscription reopened and found
            // nothing) holds nothing, so it marks the current kill drained on its way out;
            // otherwise that fence, and the kill waiting for it, would wait forever.
            let gate = shared.gates.get(&to);
            if let GateState::Killed { revision, .. } = gate.state() {
                gate.mark_drained(revision);
            }
        });
    }
}

/// The worker's life: get the consumer, wait out orphans, then pull until the recipient is
/// unparked or the gateway stops.
async fn run(shared: Arc<Shared>, to: AgentId) {
    let gate = shared.gates.get(&to);
    let mut state = gate.subscribe();
    let lookup = async {
        loop {
            match setup::parked_consumer(&shared.objects.intents, &shared.cfg, &to).await {
                Ok(found) => return found,
                Err(e) => {
                    tracing::warn!(%to, error = %e, "cannot get the parked recipient's consumer; retrying");
                    if shared.pause(Duration::from_secs(1)).await {
                        return None;
                    }
                }
            }
        }
    };
    tokio::pin!(lookup);
    // Holding nothing yet, this worker confirms kills at once: a fence must not wait on
    // JetStream administration (each try can take the request timeout, longer in an election).
    let (consumer, info) = loop {
        if let GateState::Killed { revision, .. } = *state.borrow_and_update() {
            gate.mark_drained(revision);
        }
        tokio::select! {
            found = &mut lookup => match found {
                Some(found) => break found,
                None => return,
            },
            changed = state.changed() => if changed.is_err() { return },
        }
    };
    let skip = setup::skip_list(&info);
    // Deliveries a stopped replica left unacknowledged come back only after the ack wait; start
    // after them so that they are not overtaken by newer intents of the same sender.
    {
        if info.num_ack_pending > 0 && !info.paused {
            tracing::info!(%to, unacked = info.num_ack_pending, "waiting for unacknowledged deliveries of another replica to return");
            let until = tokio::time::Instant::now() + shared.cfg.ack_wait + Duration::from_secs(1);
            // Holding nothing yet, this worker confirms kills at once while it waits.
            loop {
                if let GateState::Killed { revision, .. } = *state.borrow_and_update() {
                    gate.mark_drained(revision);
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    changed = state.changed() => if changed.is_err() { return },
                    _ = shared.cancel.cancelled() => return,
                }
            }
        }
    }
    // Do not open a subscription while killed: the consumer may not be paused yet.
    loop {
        let current = state.borrow_and_update().clone();
        if let GateState::Killed { revision, .. } = current {
            gate.mark_drained(revision);
            tokio::select! {
                _ = state.changed() => continue,
                _ = shared.cancel.cancelled() => return,
            }
        }
        break;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match pull(&shared, &consumer, &to, &skip).await {
            Ended::Cancelled => return,
            Ended::Unparked => {
                tracing::debug!(%to, "recipient unparked; drain ends");
                return;
            }
            Ended::Stream(why) => {
                if matches!(
                    setup::parked_consumer(&shared.objects.intents, &shared.cfg, &to).await,
                    Ok(None)
                ) {
                    return;
                }
                tracing::warn!(%to, why, "recipient subscription ended; reopening");
                // Everything it held was handed back: nothing to wait for until it pulls again.
                confirm_if_killed(&gate);
                if shared.pause(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Marks the current kill drained, for a worker that holds no intent of the recipient.
fn confirm_if_killed(gate: &Gate) {
    if let GateState::Killed { revision, .. } = gate.state() {
        gate.mark_drained(revision);
    }
}

enum Ended {
    Cancelled,
    Unparked,
    Stream(String),
}

/// The buffered work of one recipient in this replica.
struct Buffer {
    /// Intents waiting behind the one in flight for the same sender.
    queues: HashMap<AgentId, VecDeque<Item>>,
    /// Stream sequences held (queued or in flight), to drop JetStream redeliveries of them.
    held: HashSet<u64>,
    flights: Flights<(AgentId, u64, Outcome)>,
    busy: HashSet<AgentId>,
    handed_back: Vec<Item>,
    /// Intents received under a pin this replica just gained, not started yet.
    hold: PinHold,
    /// An unpark marker is out at this stream sequence: nothing at or after it is started.
    stop_at: Option<u64>,
    marker_sent: Option<tokio::time::Instant>,
    /// No marker before this instant: after a decline, so that a recipient whose intents keep
    /// coming does not get a marker after each of them.
    marker_after: tokio::time::Instant,
}

impl Buffer {
    /// Whether an intent may start now.
    fn may_start(&self, seq: u64) -> bool {
        self.stop_at.is_none_or(|k| seq < k)
    }
}

/// Idle ticks (500 ms each) with work held in NATS and nothing pulling before a drain reopens its
/// subscription.
const STALLED_TICKS: u32 = 4;

/// Longest pull of a drain: bounds how late the first delivery after a resume is. Shorter pulls
/// (250 ms) against paused consumers coincided with JetStream API requests on that consumer timing
/// out on nats-server 2.11.11, so this stays at the value the suite has always run with.
const DRAIN_PULL_EXPIRY: Duration = Duration::from_secs(1);

/// How long a drain waits for the shared lane's answer to a marker before it tries again.
const MARKER_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// How long a drain waits after a declined marker before it sends another.
const MARKER_RETRY: Duration = Duration::from_secs(1);

async fn pull(
    shared: &Arc<Shared>,
    consumer: &PullConsumer,
    to: &AgentId,
    skip: &HashSet<u64>,
) -> Ended {
    let cfg = &shared.cfg;
    // Pull often enough that the pin never lapses while this replica is alive, and that a
    // resumed consumer is pulled again soon: nats-server does not serve a pull request that was
    // waiting while the consumer was paused, so replay starts with the next pull. Only parked
    // recipients have a drain, so short pulls cost little.
    let expires = (cfg.pin_timeout / 4).clamp(Duration::from_millis(500), DRAIN_PULL_EXPIRY);
    let mut messages = match consumer
        .stream()
        .group(MeshNames::PRIORITY_GROUP)
        .max_messages_per_batch(cfg.max_inflight_per_recipient)
        .expires(expires)
        .heartbeat(expires / 2)
        .messages()
        .await
    {
        Ok(m) => m,
        Err(e) => return Ended::Stream(e.to_string()),
    };
    let inbox = shared.client.new_inbox();
    let mut answers = match shared.client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => return Ended::Stream(e.to_string()),
    };
    let gate = shared.gates.get(to);
    let mut state = gate.subscribe();
    let mut buf = Buffer {
        queues: HashMap::new(),
        held: HashSet::new(),
        flights: Flights::default(),
        busy: HashSet::new(),
        handed_back: Vec::new(),
        hold: PinHold::default(),
        stop_at: None,
        marker_sent: None,
        marker_after: tokio::time::Instant::now(),
    };
    let mut progress = tokio::time::interval(cfg.ack_wait / 3);
    progress.tick().await;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Its first tick after a hold starts comes at once (the ticks missed while nothing was held):
    // a drain that opens its subscription holds its first intents only as long as one look at
    // the consumer takes.
    let mut hold_check = tokio::time::interval(HOLD_CHECK);
    hold_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let filter = shared.subjects.intents_to(to);
    // Only the replica that holds the pin receives; only it asks to unpark.
    let mut received_any = false;
    // The last message received had nothing pending behind it.
    let mut caught_up = false;
    // Consecutive idle ticks with work in the consumer and no pull waiting.
    let mut stalled = 0u32;
    // While killed, intents that reach this replica are held here, unacknowledged (JetStream
    // still owns them) and in order, and delivered first on resume. Handing them back with NAK
    // instead would let newer intents already on their way overtake them. `draining` is a kill
    // whose in-flight deliveries have not all finished yet.
    let mut killed = gate.is_killed();
    let mut draining: Option<u64> = None;
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => {
                hand_back(&mut buf).await;
                return Ended::Cancelled;
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return Ended::Cancelled;
                }
                let now = state.borrow_and_update().clone();
                killed = now.is_killed();
                if let GateState::Killed { revision, .. } = now {
                    draining = Some(revision);
                } else if draining.is_none() {
                    restart_senders(shared, &mut buf);
                }
            }
            Some((from, seq, outcome)) = buf.flights.next(), if !buf.flights.is_empty() => {
                match outcome {
                    Outcome::Done => {
                        buf.held.remove(&seq);
                        next_for_sender(shared, &mut buf, from, !killed && draining.is_none());
                    }
                    Outcome::HandBack(item) | Outcome::Unreachable(item) => {
                        // Back to the head of its sender's queue: it is older than the rest.
                        buf.queues.entry(from.clone()).or_default().push_front(*item);
                        buf.busy.remove(&from);
                        // The delivery saw a kill that this drain may never see as a state of
                        // its own: a kill and the resume after it can reach the drain as one
                        // change, which restarted only the senders that were idle then. Left
                        // idle here, this sender would hold its queue until the ack wait (and
                        // with max_ack_pending reached, nothing new arrives to restart it).
                        if !killed && draining.is_none() {
                            buf.busy.insert(from.clone());
                            next_for_sender(shared, &mut buf, from, true);
                        }
                    }
                }
            }
            Some(answer) = answers.next() => {
                let text = String::from_utf8_lossy(&answer.payload);
                let mut words = text.split(' ');
                let (verdict, marker) = (words.next(), words.next().and_then(|k| k.parse::<u64>().ok()));
                if marker.is_some() && marker == buf.stop_at {
                    tracing::debug!(%to, ?marker, ?verdict, "shared lane answered");
                    if verdict == Some("accepted") {
                        return Ended::Unparked;
                    }
                    buf.stop_at = None;
                    buf.marker_sent = None;
                    buf.marker_after = tokio::time::Instant::now() + MARKER_RETRY;
                    caught_up = false;
                    if !killed && draining.is_none() {
                        restart_senders(shared, &mut buf);
                    }
                }
            }
            _ = progress.tick() => {
                for item in buf.queues.values().flatten() {
                    let _ = item.msg.ack_with(AckKind::Progress).await;
                }
                for msg in buf.hold.messages() {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            }
            // The ack floor moves with no event this replica could wait for (the previous
            // holder acks its own intents), so it is read while intents are held.
            _ = hold_check.tick(), if !buf.hold.is_empty() => {
                let floor = Floor::Filtered { stream: &shared.objects.intents, filter: &filter };
                for msg in buf.hold.release(consumer, floor, &buf.held).await {
                    admit(shared, &mut buf, msg, to, skip, !killed && draining.is_none()).await;
                }
            }
            _ = tick.tick() => {
                if buf.marker_sent.is_some_and(|t| t.elapsed() > MARKER_ANSWER_WAIT) {
                    tracing::warn!(%to, marker = ?buf.stop_at, "no answer to an unpark marker; going on");
                    // No answer (the lane is far behind, or the answer was lost): go on.
                    buf.stop_at = None;
                    buf.marker_sent = None;
                    if !killed && draining.is_none() {
                        restart_senders(shared, &mut buf);
                    }
                }
                if idle(&buf) && !killed && draining.is_none() {
                    if let Ok(info) = consumer.get_info().await {
                        if info.paused {
                            // Belt and braces: a pause must never outlive the kill.
                            let _hold = gate.hold_lock().await;
                            if !gate.is_killed() {
                                tracing::warn!(%to, "parked consumer paused though the agent is active; resuming it");
                                let _ = setup::set_hold(&shared.objects.intents, &shared.cfg, to, false).await;
                            }
                        }
                        if received_any && !caught_up {
                            caught_up = info.num_pending == 0;
                        }
                        // Watchdog: the consumer holds work for this replica, yet nothing arrives
                        // and no pull is waiting. Seen under heavy replays (the pull stream's
                        // accounting stops asking); a fresh subscription pulls again.
                        let unseen = info.num_pending > 0
                            || info.num_ack_pending > buf.held.len() + buf.hold.len();
                        if unseen && info.num_waiting == 0 && buf.stop_at.is_none() {
                            stalled += 1;
                        } else {
                            stalled = 0;
                        }
                        if stalled >= STALLED_TICKS {
                            tracing::warn!(%to, pending = info.num_pending, unacked = info.num_ack_pending,
                                held = buf.held.len(), "drain receives nothing though its consumer holds work; reopening the subscription");
                            hand_back(&mut buf).await;
                            return Ended::Stream("stalled".into());
                        }
                    }
                } else {
                    stalled = 0;
                }
            }
            msg = messages.next() => {
                let msg = match msg {
                    None => {
                        hand_back(&mut buf).await;
                        return Ended::Stream("subscription closed".into());
                    }
                    Some(Err(e)) => {
                        tracing::debug!(%to, error = %e, "pull subscription reported an error");
                        continue;
                    }
                    Some(Ok(msg)) => msg,
                };
                received_any = true;
                let Ok(info) = msg.info() else {
                    tracing::warn!(%to, "message without JetStream metadata; ignored");
                    continue;
                };
                caught_up = info.pending == 0;
                let seq = info.stream_sequence;
                buf.hold.observe(&msg, seq, "parked recipient");
                if buf.held.contains(&seq) {
                    // A redelivery of an intent this worker still holds: the held copy will be acked.
                    continue;
                }
                if let Some(msg) = buf.hold.place(msg) {
                    admit(shared, &mut buf, msg, to, skip, !killed && draining.is_none()).await;
                }
            }
        }
        if let Some(revision) = draining {
            if buf.flights.is_empty() {
                let held = buf.held.len();
                tracing::info!(%to, held, revision, "recipient killed; in-flight deliveries finished, inbound work held");
                gate.mark_drained(revision);
                draining = None;
                if !killed {
                    restart_senders(shared, &mut buf);
                }
            }
        }
        if received_any
            && caught_up
            && !killed
            && draining.is_none()
            && buf.stop_at.is_none()
            && tokio::time::Instant::now() >= buf.marker_after
            && idle(&buf)
        {
            match send_marker(shared, to, &inbox).await {
                Ok(k) => {
                    tracing::debug!(%to, marker = k, "caught up; asked the shared lane to unpark");
                    buf.stop_at = Some(k);
                    buf.marker_sent = Some(tokio::time::Instant::now());
                }
                Err(e) => {
                    tracing::debug!(%to, error = %e, "could not publish an unpark marker");
                    caught_up = false;
                }
            }
        }
    }
}

/// Nothing in flight, nothing held after a pin was gained, and nothing startable queued.
fn idle(buf: &Buffer) -> bool {
    buf.flights.is_empty()
        && buf.hold.is_empty()
        && buf
            .queues
            .values()
            .all(|q| q.front().is_none_or(|i| !buf.may_start(i.seq)))
}

/// Publishes an unpark marker for `to`; returns its stream sequence.
async fn send_marker(shared: &Shared, to: &AgentId, inbox: &str) -> Result<u64, String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MESH_UNPARK_REPLY, inbox);
    let ack = shared
        .js
        .publish_with_headers(
            shared.subjects.unpark_marker(to),
            headers,
            bytes::Bytes::new(),
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

/// After a resume or a declined marker: start the head of every idle sender's queue.
fn restart_senders(shared: &Arc<Shared>, buf: &mut Buffer) {
    let idle: Vec<AgentId> = buf
        .queues
        .iter()
        .filter(|(s, q)| !buf.busy.contains(*s) && q.front().is_some_and(|i| buf.may_start(i.seq)))
        .map(|(s, _)| s.clone())
        .collect();
    for from in idle {
        buf.busy.insert(from.clone());
        next_for_sender(shared, buf, from, true);
    }
}

/// Checks a fresh message and queues or starts its delivery.
async fn admit(
    shared: &Arc<Shared>,
    buf: &mut Buffer,
    msg: jetstream::Message,
    to: &AgentId,
    skip: &HashSet<u64>,
    deliver_now: bool,
) {
    let (seq, delivered) = match msg.info() {
        Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
        Err(e) => {
            tracing::warn!(error = %e, "message without JetStream metadata; ignored");
            return;
        }
    };
    if buf.held.contains(&seq) {
        // A redelivery of an intent this worker still holds: the held copy will be acked.
        return;
    }
    let is_marker = msg
        .headers
        .as_ref()
        .is_some_and(|h| h.get(MESH_UNPARK_REPLY).is_some());
    if skip.contains(&seq) || is_marker {
        // Delivered by the shared lane before the recipient was parked (or another recipient's
        // unpark marker, for an agent named `_unpark`).
        let _ = msg.ack().await;
        return;
    }
    let item = match check(shared, &msg, seq) {
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
    debug_assert_eq!(&item.0, to);
    let (_, from, action, id, cost) = item;
    let item = Item {
        msg,
        seq,
        delivered,
        from: from.clone(),
        to: to.clone(),
        action,
        intent_id: id,
        cost,
        admitted: false,
    };
    buf.held.insert(seq);
    // Always behind what the sender has queued: an idle sender can still have older intents
    // queued (handed back, or held while killed), and those go first.
    buf.queues.entry(from.clone()).or_default().push_back(item);
    if deliver_now && !buf.busy.contains(&from) {
        buf.busy.insert(from.clone());
        next_for_sender(shared, buf, from, true);
    }
}

/// A valid intent: recipient, sender, action, intent id, cost.
pub(crate) type Checked = (AgentId, AgentId, String, String, f64);
/// A refused one: sender (when valid), why, intent id.
pub(crate) type Refused = (Option<AgentId>, Refusal, String);

/// Validates subject and headers; what fails is rejected 400.
pub(crate) fn check(
    shared: &Shared,
    msg: &jetstream::Message,
    seq: u64,
) -> Result<Checked, Refused> {
    let msg_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(NATS_MSG_ID))
        .map(|v| v.as_str());
    let stream = &shared.cfg.names.intents_stream;
    let id = match intent_id(msg_id, stream, seq) {
        Ok(id) => id,
        Err(e) => {
            let fallback = format!("{stream}-{seq}");
            return Err((None, Refusal::Invalid(e.to_string()), fallback));
        }
    };
    let parsed = match shared.subjects.parse_intent(msg.subject.as_str()) {
        Ok(p) => p,
        Err(e) => {
            // A bad recipient or action still has a sender that deserves the notice.
            let from = msg
                .subject
                .as_str()
                .strip_prefix(shared.subjects.prefix())
                .and_then(|r| r.strip_prefix(".intent."))
                .and_then(|r| r.split('.').next())
                .and_then(|f| AgentId::new(f).ok());
            return Err((from, Refusal::Invalid(e.to_string()), id));
        }
    };
    let mut cost = 0.0;
    if let Some(value) = msg.headers.as_ref().and_then(|h| h.get(MESH_COST)) {
        match parse_cost(value.as_str()) {
            Ok(c) => cost = c,
            Err(e) => return Err((Some(parsed.from), Refusal::Invalid(e.to_string()), id)),
        }
    }
    if msg.payload.len() > shared.cfg.max_payload {
        let why = format!(
            "payload is {} bytes; the limit is {}",
            msg.payload.len(),
            shared.cfg.max_payload
        );
        return Err((Some(parsed.from), Refusal::Invalid(why), id));
    }
    let published = crate::data::activity::published_unix_ms(msg);
    shared.activity.intent(&parsed.from, &parsed.to, published);
    Ok((parsed.to, parsed.from, parsed.action, id, cost))
}

fn start(shared: &Arc<Shared>, buf: &mut Buffer, item: Item) {
    let from_gate = shared.gates.get(&item.from);
    let to_gate = shared.gates.get(&item.to);
    let from = item.from.clone();
    let seq = item.seq;
    let shared = shared.clone();
    buf.flights.spawn(async move {
        let outcome = deliver(shared, item, from_gate, to_gate, OnFailure::Retry).await;
        (from, seq, outcome)
    });
}

/// After a delivery of `from` ended: start its next intent (unless the recipient is killed or
/// the gateway stops, when it stays queued for the hand-back), or mark the sender idle.
fn next_for_sender(shared: &Arc<Shared>, buf: &mut Buffer, from: AgentId, go_on: bool) {
    let startable = buf
        .queues
        .get(&from)
        .and_then(VecDeque::front)
        .is_some_and(|i| buf.may_start(i.seq));
    let next = if go_on && startable && !shared.cancel.is_cancelled() {
        buf.queues.get_mut(&from).and_then(VecDeque::pop_front)
    } else {
        None
    };
    match next {
        Some(item) => start(shared, buf, item),
        None => {
            buf.busy.remove(&from);
        }
    }
    if buf.queues.get(&from).is_some_and(VecDeque::is_empty) {
        buf.queues.remove(&from);
    }
}

/// Waits for deliveries in flight, then NAKs everything held, lowest sequence first, so that
/// JetStream redelivers it in the original order. Returns how many intents were handed back.
async fn hand_back(buf: &mut Buffer) -> u64 {
    while let Some((_, _, outcome)) = buf.flights.next().await {
        if let Outcome::HandBack(item) | Outcome::Unreachable(item) = outcome {
            buf.handed_back.push(*item);
        }
    }
    let mut all: Vec<Item> = buf.handed_back.drain(..).collect();
    for (_, q) in buf.queues.drain() {
        all.extend(q);
    }
    let mut all: Vec<(u64, jetstream::Message)> = all.into_iter().map(|i| (i.seq, i.msg)).collect();
    for msg in buf.hold.take_all() {
        if let Ok(info) = msg.info() {
            all.push((info.stream_sequence, msg));
        }
    }
    all.sort_by_key(|(seq, _)| *seq);
    for (_, msg) in &all {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
    buf.held.clear();
    buf.busy.clear();
    all.len() as u64
}
