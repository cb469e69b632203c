//! Parking recipients the lane cannot serve now, and taking them back when their drain asks
//! with an unpark marker ([`crate::data::park`], [`crate::data::drain`]).

use super::*;

impl Lane {
    /// Parks every recipient that asked for it and has nothing in flight any more.
    pub(super) async fn park_ready(&mut self) {
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
            // An older intent of `to` that came back while a pin changed can wait in the hold
            // below the queue: the parked consumer starts at it, or the lane, once the hold
            // releases it, would ack it as parked and nobody would deliver it.
            let held_low = self
                .hold
                .messages()
                .filter(|m| {
                    self.shared
                        .subjects
                        .parse_intent(m.subject.as_str())
                        .is_ok_and(|s| s.to == to)
                })
                .filter_map(|m| m.info().ok().map(|i| i.stream_sequence))
                .min();
            let start = held_low.map_or(items[0].seq, |h| h.min(items[0].seq));
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
    pub(super) async fn read_parked(&mut self) -> Result<(), setup::SetupError> {
        let set =
            setup::parked_recipients(&self.shared.objects.intents, &self.shared.cfg.names).await?;
        self.parked = set;
        self.parked_known = true;
        Ok(())
    }

    /// An unpark marker for `to` at stream sequence `seq`.
    pub(super) async fn unpark(&mut self, to: &AgentId, seq: u64, reply: &str) {
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
