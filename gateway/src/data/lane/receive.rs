//! What the lane does with each message it receives (admit, queue, start, or hold) and with
//! each delivery that finishes (start the sender's next intent, or park the recipient).

use super::*;
use crate::data::pin_hold::pin_of;

impl Lane {
    /// A message from the shared consumer.
    pub(super) async fn received(&mut self, msg: jetstream::Message) {
        let (seq, delivered) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(e) => {
                tracing::warn!(error = %e, "message without JetStream metadata; ignored");
                return;
            }
        };
        self.shared.metrics.saw_pin(pin_of(&msg));
        self.hold.observe(&msg, seq, "shared lane");
        if self.held.contains(&seq) {
            // A redelivery of an intent this lane still holds: the held copy will be acked.
            return;
        }
        let Some(msg) = self.hold.place(msg) else {
            self.total += 1;
            return;
        };
        self.admit(msg, seq, delivered).await;
    }

    /// Intents held after a pin was gained whose turn has come, lowest sequence first.
    pub(super) async fn released(&mut self, messages: Vec<jetstream::Message>) {
        if messages.is_empty() {
            return;
        }
        // The previous holder may have parked or unparked recipients meanwhile.
        self.parked_known = false;
        self.total -= messages.len();
        // Set once the parked set could not be read for one of them, kept back: the rest follow.
        let mut kept = false;
        for msg in messages {
            let (seq, delivered) = match msg.info() {
                Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
                Err(_) => continue,
            };
            if kept {
                self.hold.keep(msg);
                self.total += 1;
                continue;
            }
            self.admit(msg, seq, delivered).await;
            kept = !self.parked_known;
        }
    }

    /// A message this lane may act on now.
    pub(super) async fn admit(&mut self, msg: jetstream::Message, seq: u64, delivered: u32) {
        if self.last_message.elapsed() >= REFRESH_AFTER_IDLE {
            self.parked_known = false;
        }
        self.last_message = Instant::now();
        if !self.parked_known {
            if let Err(e) = self.read_parked().await {
                // Without the parked set the lane could deliver a parked recipient's intent
                // twice or out of order. Handed back, it would come back after newer intents of
                // its sender; kept, it and everything after it wait for the next try.
                tracing::warn!(error = %e, seq, "cannot list parked recipients; holding intents until it can");
                self.hold.keep(msg);
                self.total += 1;
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
    pub(super) fn finished(&mut self, to: AgentId, from: AgentId, seq: u64, outcome: Outcome) {
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
}
