//! Giving work back: when this replica stops or loses the pin, what it holds goes back to
//! JetStream in stream order, so that whoever delivers next keeps the order per sender.

use super::*;

impl Lane {
    /// A clean stop: hands everything back in order and passes the pin on at once, so that a
    /// standby (or the next process) delivers without waiting out the pin timeout.
    ///
    /// Releasing the pin is only safe when nothing can still be on its way to this replica: a
    /// message delivered into a subscription that is then dropped would come back only after the
    /// ack wait, behind newer intents of its sender. So the shared consumer is paused first (for
    /// a bounded time, in case this process dies here), whatever had arrived is collected and
    /// handed back with the rest, lowest sequence first, and only then is the pin released and
    /// the consumer resumed. If the pause fails, the pin is kept (the successor waits for it).
    pub(super) async fn step_down(&mut self, mut messages: jetstream::consumer::pull::Stream) {
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
    pub(super) async fn hand_back(&mut self) {
        let mut all = self.hand_back_items().await;
        all.sort_by_key(|(seq, _)| *seq);
        for (_, msg) in &all {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
        self.held.clear();
        self.total = 0;
    }

    /// Waits for deliveries in flight; returns every intent in memory with its sequence.
    pub(super) async fn hand_back_items(&mut self) -> Vec<(u64, jetstream::Message)> {
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
        for msg in self.hold.take_all() {
            if let Ok(info) = msg.info() {
                out.push((info.stream_sequence, msg));
            }
        }
        out
    }
}
