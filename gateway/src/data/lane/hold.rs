//! Holding after the lane gains the pin: nats-server drops a consumer's pin when its leader
//! changes, so for a while two replicas can hold intents of the shared consumer. The replica that
//! gains the pin starts nothing newer until the consumer's ack floor shows that the previous
//! holder's intents are done; one segment per pin gained, oldest first.

use super::*;

/// What a lane holds after it gained a pin, up to the next pin it gained.
pub(super) struct Hold {
    /// The first stream sequence received under the new pin. Intents below it belonged to the
    /// previous holder; when the consumer's ack floor reaches `first - 1` they are all delivered,
    /// rejected or parked, and what is held here can start.
    pub(super) first: u64,
    /// The lowest sequence held here: `first`, or for a segment of redeliveries the oldest.
    pub(super) lowest: u64,
    /// A segment of older intents redelivered while holding, kept ahead of the others: they go
    /// once every intent before the oldest of them is acked.
    pub(super) redelivered: bool,
    /// Intents at or after `first` (and older ones redelivered while holding), as received.
    pub(super) messages: Vec<jetstream::Message>,
    pub(super) since: Instant,
}
impl Lane {
    /// Reads the consumer's ack floor; releases the held intents once it has reached them.
    pub(super) async fn check_hold(&mut self, consumer: &PullConsumer) {
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
}
