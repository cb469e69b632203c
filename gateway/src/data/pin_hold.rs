//! Holding after a pin is gained, for the shared lane and for every drain: nats-server forgets a
//! pinned consumer's pin when the consumer's leader changes (its node is lost or restarted) and
//! pins whichever replica pulls next, while the replica that had the pin may still hold intents
//! it pulled and go on delivering them. So a replica that sees a new `Nats-Pin-Id` holds what
//! it receives under that pin.
//!
//! A gap in the consumer's delivery sequence means the same: nats-server delivered something this
//! replica never received, lost in transit when the node it is connected to went away (the
//! server redelivers it after `ack_wait`) or sent to another replica under another pin. What
//! follows a gap is held the same way, so that the lost intent, once redelivered, still goes
//! before the newer ones of its sender. The shared lane's consumer sees every stream sequence, so
//! it knows more: a sequence beyond the next one it expects means intents it has not seen, held by
//! another replica or not delivered yet, and it holds from there too.
//!
//! Held intents go lowest first, each once every older intent of the consumer is done (delivered,
//! rejected or parked, so acknowledged) or was received by this replica (so it is held, queued,
//! in flight, or acknowledged by it). Waiting only for the floor to reach the lowest held intent
//! let an intent that another replica still held be overtaken by newer ones of its sender that
//! came back here first (a rolling restart under load: 2 to 3 inversions in 2 of 10 runs before).
//! Without counting what this replica received and acknowledged itself, a lane whose floor was
//! held back by one slow delivery released 1 to 3 intents per check while thousands waited (the
//! chaos soak). When the consumer has no more unacknowledged deliveries than this replica holds,
//! nothing is outstanding elsewhere and everything held goes at once.
//!
//! The consumer's info can be stale: right after a node came back, nats-server answered the
//! shared lane's hold with an ack floor of 0 and nothing unacknowledged, three checks after a
//! floor of 248,995, and the hold let 1,388 intents go while the previous holder still had some
//! (the 30-minute chaos soak: 6 inversions). A floor never moves back, so a reading below one
//! already seen is skipped (and accepted only if it persists for [`STALE_LIMIT`]); and the
//! "nothing outstanding elsewhere" shortcut is taken only from a reading whose last delivery is
//! at least the highest this replica received.
//!
//! "Done" is read from the consumer's ack floor. For the shared lane, whose consumer sees every
//! message, everything between the floor and a held intent must have been received. A drain's
//! consumer filters on one recipient, and nats-server moves a filtered consumer's stream floor
//! only when an acknowledgement moves it (intents of other recipients after the last acked one
//! leave it behind), so the recipient's intents after the floor are looked up in the stream, one
//! by one, until the held one: each must have been received.

use std::collections::{BTreeSet, HashSet};

use async_nats::header::NATS_PIN_ID;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::Message;
use tokio::time::Instant;

/// How many received stream sequences a hold remembers. One it forgot only makes a hold wait for
/// the ack floor to pass it.
const SEEN_WINDOW: usize = 65_536;

/// How often a replica holding intents after gaining a pin reads the consumer's ack floor.
pub const HOLD_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// How long readings whose ack floor is below one already seen are skipped before they are
/// believed (a consumer recreated from an earlier start must not hold its intents forever).
const STALE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What one read of the consumer's info says, as far as a hold is concerned.
#[derive(Clone, Copy, Debug)]
struct Reading {
    /// The ack floor's stream sequence.
    acked: u64,
    /// The first stream sequence not acknowledged ([`crate::setup::first_unacked`]).
    next: u64,
    /// Deliveries not acknowledged.
    unacked: usize,
    /// The stream sequence of the consumer's last delivery.
    delivered: u64,
}

/// Whether a reading may be used, and for what.
#[derive(Debug, PartialEq, Eq)]
enum Trust {
    /// Its floor is below one already seen: a stale view, skipped.
    Stale,
    /// Its floor may be used, but it has not seen every delivery this replica received, so its
    /// count of unacknowledged deliveries may miss some held elsewhere.
    FloorOnly,
    /// Up to date with everything this replica received.
    Full,
}

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
    /// Holding: a pin was gained or deliveries were missed, and what was held is not all
    /// released yet. Everything received meanwhile is held.
    holding: bool,
    /// The messages held, with when each was received.
    held: Vec<(Message, Instant)>,
    /// The stream sequences received (the latest [`SEEN_WINDOW`]): each is held, in this
    /// replica's hands, or acknowledged by it, so an older intent it need not wait for.
    seen: BTreeSet<u64>,
    /// Every intent of the consumer from the ack floor up to here (exclusive) was found
    /// acknowledged or seen by the last release; the next one goes on from here.
    covered_to: u64,
    /// The consumer delivers every stream sequence (the shared lane's): a skipped sequence is an
    /// intent outstanding elsewhere.
    whole: bool,
    /// The highest first-unacknowledged sequence read: the floor never moves back.
    max_next: u64,
    /// Since when readings have been below `max_next`.
    stale_since: Option<Instant>,
}

/// Where the ack floor is read from: the consumer alone, or with the stream for a consumer
/// filtered on `filter` (see the module doc).
pub enum Floor<'a> {
    /// A consumer of every stream sequence.
    Whole,
    /// A consumer filtered on `filter`.
    Filtered { stream: &'a Stream, filter: &'a str },
}

impl PinHold {
    /// The hold of a consumer that delivers every stream sequence (see the module doc).
    pub fn for_whole_stream() -> Self {
        PinHold {
            whole: true,
            ..PinHold::default()
        }
    }

    /// Notes every message received, redeliveries of intents in hand included, at stream
    /// sequence `seq`: a new pin, a gap in the delivery sequence or skipped stream sequences (the
    /// shared lane) start a hold.
    pub fn observe(&mut self, msg: &Message, seq: u64, what: &str) {
        let pin = pin_of(msg).map(str::to_string);
        let dseq = msg.info().map(|i| i.consumer_sequence).ok();
        let gap = match (self.delivered, dseq) {
            (Some(last), Some(now)) => now > last + 1,
            _ => false,
        };
        self.delivered = self.delivered.max(dseq);
        let gained = pin.is_some() && pin != self.pin;
        // Sequences skipped: delivered to another replica (it had the pin), or not delivered yet.
        let skipped = self.whole && self.highest > 0 && seq > self.highest + 1;
        if gained || gap || skipped {
            if gained {
                tracing::info!(pin = ?pin, previous = ?self.pin, seq, what, "consumer pinned to this replica; holding new intents until the previous holder's are acknowledged");
            } else if skipped && !gap {
                tracing::info!(seq, after = self.highest, what, "stream sequences skipped (outstanding at another replica); holding new intents until they are acknowledged");
            } else {
                tracing::warn!(seq, what, delivery = ?dseq, "deliveries missing (lost with a connection, or taken under another pin); holding new intents until the missing ones are acknowledged");
            }
            self.pin = pin;
            self.holding = true;
        }
        self.highest = self.highest.max(seq);
        self.seen.insert(seq);
        if self.seen.len() > SEEN_WINDOW {
            self.seen.pop_first();
        }
    }

    /// Takes an observed message that is not in hand yet: keeps it while holding, or gives it
    /// back to be acted on now.
    pub fn place(&mut self, msg: Message) -> Option<Message> {
        if !self.holding {
            return Some(msg);
        }
        self.held.push((msg, Instant::now()));
        None
    }

    /// Keeps a message the caller cannot act on yet (what it needs from NATS did not answer):
    /// it and everything received after it wait, in order, for the next release.
    pub fn keep(&mut self, msg: Message) {
        self.holding = true;
        self.held.push((msg, Instant::now()));
    }

    /// Nothing held, and nothing to hold.
    pub fn is_empty(&self) -> bool {
        !self.holding
    }

    /// How many messages are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Every message held, for progress acknowledgements.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.held.iter().map(|(m, _)| m)
    }

    /// Everything held, for a hand-back; the next message starts a new pin's hold.
    pub fn take_all(&mut self) -> Vec<Message> {
        self.pin = None;
        self.delivered = None;
        self.holding = false;
        self.seen.clear();
        self.covered_to = 0;
        self.held.drain(..).map(|(m, _)| m).collect()
    }

    /// Reads the consumer's ack floor and returns the held intents, lowest sequence first, that
    /// may be acted on now: each once every older intent of the consumer is acknowledged or in
    /// this replica's hands (see the module doc).
    ///
    /// `in_hand` are the sequences the caller holds unacknowledged outside the hold (queued or in
    /// flight): when the consumer has no more unacknowledged deliveries than this replica holds,
    /// none is outstanding elsewhere and everything held goes.
    pub async fn release(
        &mut self,
        consumer: &PullConsumer,
        floor: Floor<'_>,
        in_hand: &HashSet<u64>,
    ) -> Vec<Message> {
        if self.held.is_empty() {
            self.holding = false;
            return Vec::new();
        }
        let reading = match consumer.get_info().await {
            Ok(info) => Reading {
                acked: info.ack_floor.stream_sequence,
                next: crate::setup::first_unacked(&info),
                unacked: info.num_ack_pending,
                delivered: info.delivered.stream_sequence,
            },
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the consumer's ack floor; holding");
                return Vec::new();
            }
        };
        let trust = self.trust(reading, Instant::now());
        if trust == Trust::Stale {
            return Vec::new();
        }
        let Reading {
            acked,
            next,
            unacked,
            ..
        } = reading;
        self.seen = self.seen.split_off(&next);
        let from = next.max(self.covered_to);
        let mut all: Vec<(u64, Message, Instant)> = self
            .held
            .drain(..)
            .map(|(m, since)| (seq_of(&m), m, since))
            .collect();
        all.sort_by_key(|(seq, _, _)| *seq);
        let seqs: Vec<u64> = all.iter().map(|(seq, _, _)| *seq).collect();
        let seen = &self.seen;
        // Only what is still unacknowledged counts: redeliveries of intents below the floor would
        // make up for one still outstanding at another replica.
        let ours: HashSet<u64> = seqs
            .iter()
            .chain(in_hand.iter())
            .copied()
            .filter(|s| *s >= next)
            .collect();
        let (n, covered_to) = if trust == Trust::Full && unacked <= ours.len() {
            // Every unacknowledged delivery of the consumer is here: whatever this replica did
            // not see between the floor and what it holds is acknowledged. Without this, intents
            // acked by the previous holder above the floor let a hold go one intent per check.
            (
                seqs.len(),
                seqs.last().map_or(from, |last| last + 1).max(from),
            )
        } else {
            match floor {
                Floor::Whole => releasable(from, &seqs, |t| seen.contains(&t)),
                Floor::Filtered { stream, filter } => {
                    releasable_filtered(stream, filter, from, &seqs, seen).await
                }
            }
        };
        self.covered_to = covered_to;
        let rest = all.split_off(n);
        self.holding = !rest.is_empty();
        self.held = rest.into_iter().map(|(_, m, since)| (m, since)).collect();
        if n > 0 {
            let waited_ms = all
                .iter()
                .map(|(_, _, since)| since.elapsed().as_millis() as u64)
                .max();
            tracing::info!(
                first = seqs[0],
                floor = acked,
                released = n,
                still_held = seqs.len() - n,
                waited_ms,
                "every older intent acknowledged or in hand; delivering"
            );
        } else {
            tracing::debug!(
                lowest = seqs.first(),
                floor = acked,
                "older intents outstanding elsewhere; holding"
            );
        }
        all.into_iter().map(|(_, m, _)| m).collect()
    }

    /// Whether `reading`, taken at `now`, may be used (see the module doc).
    fn trust(&mut self, reading: Reading, now: Instant) -> Trust {
        if reading.next < self.max_next {
            let since = *self.stale_since.get_or_insert(now);
            if now.duration_since(since) < STALE_LIMIT {
                tracing::info!(
                    floor = reading.acked,
                    first_unacked = reading.next,
                    seen_first_unacked = self.max_next,
                    "the consumer's ack floor read lower than before (a stale view); holding"
                );
                return Trust::Stale;
            }
            tracing::warn!(
                floor = reading.acked,
                seen_first_unacked = self.max_next,
                "the consumer's ack floor stayed lower than before for {STALE_LIMIT:?}; believing it"
            );
        }
        self.max_next = reading.next;
        self.stale_since = None;
        if reading.delivered >= self.highest {
            Trust::Full
        } else {
            Trust::FloorOnly
        }
    }
}

/// Stream lookups one release of a filtered consumer's hold may make (one per intent it finds
/// seen on the way); the next release goes on from where it stopped.
const LOOKUPS_PER_RELEASE: usize = 256;

/// [`releasable`] for a consumer filtered on `filter`: its intents are not every stream sequence,
/// so the next one after each point is looked up in the stream.
async fn releasable_filtered(
    stream: &Stream,
    filter: &str,
    next: u64,
    seqs: &[u64],
    seen: &BTreeSet<u64>,
) -> (usize, u64) {
    let mut cursor = next;
    let mut lookups = 0;
    for (n, &seq) in seqs.iter().enumerate() {
        while cursor < seq {
            if lookups == LOOKUPS_PER_RELEASE {
                return (n, cursor);
            }
            lookups += 1;
            match stream
                .get_first_raw_message_by_subject(filter, cursor)
                .await
            {
                Ok(found) if found.sequence >= seq => cursor = seq,
                Ok(found) if seen.contains(&found.sequence) => cursor = found.sequence + 1,
                Ok(found) => return (n, found.sequence),
                // Nothing stored from there on: what this replica holds was deleted meanwhile.
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => cursor = seq,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot look up the consumer's next intent; holding");
                    return (n, cursor);
                }
            }
        }
        cursor = cursor.max(seq + 1);
    }
    (seqs.len(), cursor)
}

/// How many of the held sequences `seqs` (ascending) may go now, each once every sequence from
/// `next` up to it is `covered` (seen by this replica: held, in hand or acknowledged by it), and
/// the first sequence not known covered. Sequences below `next` go (redeliveries).
fn releasable(next: u64, seqs: &[u64], covered: impl Fn(u64) -> bool) -> (usize, u64) {
    let mut cursor = next;
    for (n, &seq) in seqs.iter().enumerate() {
        while cursor < seq {
            if !covered(cursor) {
                return (n, cursor);
            }
            cursor += 1;
        }
        cursor = cursor.max(seq + 1);
    }
    (seqs.len(), cursor)
}

fn seq_of(msg: &Message) -> u64 {
    msg.info().map(|i| i.stream_sequence).unwrap_or(0)
}

/// The pin a message was delivered under.
pub fn pin_of(msg: &Message) -> Option<&str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get_last(NATS_PIN_ID))
        .map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::{releasable, PinHold, Reading, Trust, STALE_LIMIT};
    use tokio::time::Instant;

    fn reading(acked: u64, unacked: usize, delivered: u64) -> Reading {
        Reading {
            acked,
            next: acked + 1,
            unacked,
            delivered,
        }
    }

    /// The 30-minute chaos soak: the shared lane's hold read floors 248,988, 248,992 and 248,995,
    /// then, a node having just come back, a floor of 0 with nothing unacknowledged, and let
    /// 1,388 intents go while the previous holder still had older ones of their senders.
    #[test]
    fn a_floor_that_moves_back_is_a_stale_view_and_is_not_used() {
        let mut hold = PinHold::for_whole_stream();
        hold.highest = 250_400;
        let t0 = Instant::now();
        assert_eq!(
            hold.trust(reading(248_988, 1_400, 250_400), t0),
            Trust::Full
        );
        assert_eq!(
            hold.trust(reading(248_995, 1_400, 250_400), t0),
            Trust::Full
        );
        assert_eq!(hold.trust(reading(0, 0, 0), t0), Trust::Stale);
        assert_eq!(
            hold.trust(reading(0, 0, 0), t0 + STALE_LIMIT / 2),
            Trust::Stale
        );
        // The real floor again.
        assert_eq!(
            hold.trust(reading(248_996, 1_390, 250_400), t0),
            Trust::Full
        );
        // A floor that stays back longer than the limit is believed (a recreated consumer).
        let t1 = t0 + STALE_LIMIT;
        assert_eq!(hold.trust(reading(10, 0, 250_400), t1), Trust::Stale);
        assert_eq!(
            hold.trust(reading(10, 0, 250_400), t1 + STALE_LIMIT),
            Trust::Full
        );
    }

    /// A view that has not seen every delivery this replica received may count fewer
    /// unacknowledged deliveries than are outstanding, so "nothing elsewhere" is not taken from it.
    #[test]
    fn a_view_behind_this_replicas_deliveries_gives_its_floor_only() {
        let mut hold = PinHold::for_whole_stream();
        hold.highest = 500;
        assert_eq!(
            hold.trust(reading(100, 3, 499), Instant::now()),
            Trust::FloorOnly
        );
        assert_eq!(
            hold.trust(reading(100, 3, 500), Instant::now()),
            Trust::Full
        );
    }

    #[test]
    fn a_held_intent_waits_for_every_older_sequence_to_be_acknowledged_or_seen() {
        // Rolling restart: the floor is 1178, this replica got 1179..=1631 and 1755 back, and 1632
        // is still at the replica that had the pin. Only 1179..=1631 may go.
        let mut seqs: Vec<u64> = (1179..=1631).collect();
        seqs.push(1755);
        assert_eq!(releasable(1179, &seqs, |_| false), (1631 - 1179 + 1, 1632));
        // Once 1632..1755 were seen here (in hand, or delivered and acked), 1755 goes too.
        assert_eq!(
            releasable(1179, &seqs, |t| (1632..1755).contains(&t)),
            (seqs.len(), 1756)
        );
    }

    #[test]
    fn sequences_below_the_floor_go_and_a_gap_at_the_floor_holds_everything() {
        assert_eq!(releasable(10, &[3, 7, 10, 11], |_| false), (4, 12));
        assert_eq!(releasable(10, &[3, 12, 13], |_| false), (1, 10));
        assert_eq!(releasable(10, &[12, 13], |t| t == 10 || t == 11), (2, 14));
        assert_eq!(releasable(10, &[], |_| false), (0, 10));
    }
}
