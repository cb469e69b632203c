//! Holding after a pin is gained, for the shared lane and for every drain: nats-server forgets a
//! pinned consumer's pin when the consumer's leader changes (its node is lost or restarted) and
//! pins whichever replica pulls next, while the replica that had the pin may still hold intents
//! it pulled and go on delivering them. So a replica that sees a new `Nats-Pin-Id` starts
//! nothing it received under that pin until every older intent of the consumer is done
//! (delivered, rejected or parked, so acknowledged) or handed back to it; one segment per pin
//! gained, oldest first.
//!
//! A gap in the consumer's delivery sequence means the same: nats-server delivered something this
//! replica never received, lost in transit when the node it is connected to went away (the
//! server redelivers it after `ack_wait`) or sent to another replica under another pin. What
//! follows a gap is held the same way, so that the lost intent, once redelivered, still goes
//! before the newer ones of its sender.
//!
//! "Done" is read from the consumer's ack floor. For the shared lane, whose consumer sees every
//! message, the floor is exact. A drain's consumer filters on one recipient, and nats-server
//! moves a filtered consumer's stream floor only when an acknowledgement moves it: after the
//! last pending intent is acked, intents of other recipients that follow leave the floor below
//! the next pending one until that one is acked. So for a filtered consumer the first intent of
//! the recipient after the floor is looked up in the stream: when it is one this replica holds
//! (or later), nothing older is outstanding.

use std::collections::VecDeque;

use async_nats::header::NATS_PIN_ID;
use async_nats::jetstream::consumer::{self, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::Message;
use tokio::time::Instant;

/// How often a replica holding intents after gaining a pin reads the consumer's ack floor.
pub const HOLD_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Intents received under pins this replica gained, not started yet.
#[derive(Default)]
pub struct PinHold {
    /// The last `Nats-Pin-Id` seen on a message: a different one means the pin changed hands.
    pin: Option<String>,
    /// The highest stream sequence received.
    highest: u64,
    /// The highest consumer delivery sequence received: every delivery, redeliveries included,
    /// takes the next one, so a jump means a delivery this replica did not get.
    delivered: Option<u64>,
    /// One segment per pin gained, oldest first (the pin can move away and back while this
    /// replica still holds, and another replica then had the intents between two segments).
    segments: VecDeque<Segment>,
}

/// What a replica holds after it gained a pin, up to the next pin it gained.
struct Segment {
    /// The first stream sequence received under the new pin. Intents below it belonged to the
    /// previous holder.
    first: u64,
    /// The lowest sequence held here: `first`, or for a segment of redeliveries the oldest.
    lowest: u64,
    /// A segment of older intents redelivered while holding, kept ahead of the others: they go
    /// once every intent before the oldest of them is acked.
    redelivered: bool,
    messages: Vec<Message>,
    since: Instant,
}

/// Where the ack floor is read from: the consumer alone, or with the stream for a consumer
/// filtered on `filter` (see the module doc).
pub enum Floor<'a> {
    Whole,
    Filtered { stream: &'a Stream, filter: &'a str },
}

impl PinHold {
    /// Notes every message received, redeliveries of intents in hand included, at stream
    /// sequence `seq`: a new pin, or a gap in the delivery sequence, starts a segment.
    pub fn observe(&mut self, msg: &Message, seq: u64, what: &str) {
        let pin = pin_of(msg).map(str::to_string);
        let dseq = msg.info().map(|i| i.consumer_sequence).ok();
        let gap = match (self.delivered, dseq) {
            (Some(last), Some(now)) => now > last + 1,
            _ => false,
        };
        self.delivered = self.delivered.max(dseq);
        let gained = pin.is_some() && pin != self.pin;
        if gained || gap {
            // The new pin's first message can be a redelivery of an older intent (the new
            // leader does not know of progress acks sent to the old one): the segment starts
            // after everything this replica has seen.
            let first = seq.max(self.highest + 1);
            if gained {
                tracing::info!(pin = ?pin, previous = ?self.pin, first, what, "consumer pinned to this replica; holding new intents until the previous holder's are acknowledged");
            } else {
                tracing::warn!(first, what, delivery = ?dseq, "deliveries missing (lost with a connection, or taken under another pin); holding new intents until the missing ones are acknowledged");
            }
            self.pin = pin;
            if self.segments.back().is_none_or(|h| h.first < first) {
                self.segments
                    .push_back(Segment::new(first, false, Instant::now()));
            }
        }
        self.highest = self.highest.max(seq);
    }

    /// Takes an observed message that is not in hand yet: keeps it if older intents may still
    /// be outstanding, or gives it back to be acted on now.
    pub fn place(&mut self, msg: Message, seq: u64) -> Option<Message> {
        // The newest segment that starts at or before this sequence.
        if let Some(segment) = self.segments.iter_mut().rev().find(|h| h.first <= seq) {
            segment.messages.push(msg);
            return None;
        }
        if self.segments.is_empty() {
            return Some(msg);
        }
        // Below the first segment: an older intent redelivered (handed back, or its ack wait ran
        // out at the new leader) that the previous holder may also still hold; it waits in the
        // oldest segment until every intent before it is acked.
        match self.segments.front_mut() {
            Some(segment) if segment.redelivered => segment.lowest = segment.lowest.min(seq),
            _ => self
                .segments
                .push_front(Segment::new(seq, true, Instant::now())),
        }
        if let Some(segment) = self.segments.front_mut() {
            segment.messages.push(msg);
        }
        None
    }

    /// Keeps a message the caller cannot act on yet (what it needs from NATS did not answer):
    /// it and everything received after it wait, in order, for the next release.
    pub fn keep(&mut self, msg: Message, seq: u64) {
        if self.segments.is_empty() {
            self.segments
                .push_back(Segment::new(seq, false, Instant::now()));
        }
        let kept = self.place(msg, seq);
        debug_assert!(
            kept.is_none(),
            "a segment takes every message while one exists"
        );
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// How many messages are held.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.messages.len()).sum()
    }

    /// Every message held, for progress acknowledgements.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.segments.iter().flat_map(|s| &s.messages)
    }

    /// Everything held, for a hand-back; the next message starts a new pin's hold.
    pub fn take_all(&mut self) -> Vec<Message> {
        self.pin = None;
        self.delivered = None;
        self.segments.drain(..).flat_map(|s| s.messages).collect()
    }

    /// Reads the consumer's ack floor; when every intent before the oldest segment is done,
    /// returns that segment's messages, lowest sequence first, to be acted on now. One segment
    /// at a time: the next one waits for this one's intents to be acked, and for those another
    /// replica had between the two.
    pub async fn release(&mut self, consumer: &PullConsumer, floor: Floor<'_>) -> Vec<Message> {
        let Some(lowest) = self.segments.front().map(|h| h.lowest) else {
            return Vec::new();
        };
        let (acked, start) = match consumer.get_info().await {
            Ok(info) => (info.ack_floor.stream_sequence, start_of(&info.config)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the consumer's ack floor; holding");
                return Vec::new();
            }
        };
        // A consumer that starts at a sequence reports a floor of 0 until its first ack.
        let next = (acked + 1).max(start);
        let done = next >= lowest
            || match floor {
                Floor::Whole => false,
                Floor::Filtered { stream, filter } => {
                    match stream.get_first_raw_message_by_subject(filter, next).await {
                        Ok(found) => found.sequence >= lowest,
                        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => true,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot look up the consumer's next intent; holding");
                            false
                        }
                    }
                }
            };
        if !done {
            tracing::debug!(
                lowest,
                floor = acked,
                "older intents still outstanding; holding"
            );
            return Vec::new();
        }
        let Some(segment) = self.segments.pop_front() else {
            return Vec::new();
        };
        tracing::info!(
            first = segment.first,
            floor = acked,
            held = segment.messages.len(),
            waited_ms = segment.since.elapsed().as_millis() as u64,
            "previous pin holder's intents acknowledged; delivering"
        );
        let mut messages = segment.messages;
        messages.sort_by_key(|m| m.info().map(|i| i.stream_sequence).unwrap_or(0));
        messages
    }
}

impl Segment {
    fn new(first: u64, redelivered: bool, since: Instant) -> Self {
        Segment {
            first,
            lowest: first,
            redelivered,
            messages: Vec::new(),
            since,
        }
    }
}

/// The first stream sequence a consumer covers.
fn start_of(config: &consumer::Config) -> u64 {
    match config.deliver_policy {
        DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
        _ => 1,
    }
}

/// The pin a message was delivered under.
pub fn pin_of(msg: &Message) -> Option<&str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get_last(NATS_PIN_ID))
        .map(|v| v.as_str())
}
