//! One intent's way to its recipient: check both gates, send the request, acknowledge the
//! JetStream message when the agent replies, retry in place when nobody answers.
//!
//! Retrying in place (rather than NAK) is what keeps the order per sender: the next intent of
//! the same sender is not started until this one is done. Progress acks keep JetStream from
//! redelivering an intent that is waiting for its recipient.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, RequestErrorKind};
use mesh_schemas::headers::{MESH_ACTION, MESH_ATTEMPT, MESH_FROM, MESH_INTENT_ID};
use mesh_schemas::AgentId;

use crate::control::gate::{Gate, GateState, InFlight};
use crate::data::reject::Refusal;
use crate::metrics::Metrics;
use crate::shared::Shared;

/// An intent pulled from a recipient's consumer, checked and ready to deliver.
pub struct Item {
    pub msg: jetstream::Message,
    pub seq: u64,
    /// How many times JetStream has delivered it (from 1).
    pub delivered: u32,
    pub from: AgentId,
    pub to: AgentId,
    pub action: String,
    pub intent_id: String,
    /// `Mesh-Cost` of the intent, USD (0 when absent).
    pub cost: f64,
    /// Whether the policy checks (actions, rate, caps) passed already: they count an intent
    /// once, however often its delivery is retried or held.
    pub admitted: bool,
}

/// How a delivery ended.
pub enum Outcome {
    /// Acknowledged by the agent, or rejected with a record: the intent is finished.
    Done,
    /// The recipient was killed, or the gateway is stopping: hand the intent back (NAK).
    HandBack(Box<Item>),
    /// The recipient did not take the intent (no responder, no reply in time) and the caller
    /// asked not to retry in place: the shared lane parks the recipient instead.
    Unreachable(Box<Item>),
}

/// What a delivery does when the recipient does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Retry in place with backoff (a parked recipient's own lane).
    Retry,
    /// Give the intent back as [`Outcome::Unreachable`] (the shared lane).
    GiveBack,
}

/// Delivers `item`, retrying until it is done or must be handed back.
pub async fn deliver(
    shared: Arc<Shared>,
    mut item: Item,
    from: Arc<Gate>,
    to: Arc<Gate>,
    on_failure: OnFailure,
) -> Outcome {
    let cfg = &shared.cfg;
    let mut attempt = item.delivered.max(1);
    let mut backoff = Duration::from_millis(50);
    let mut last_progress = Instant::now();
    // Whether this delivery waited while the replica's kill state was unknown.
    let mut waited_blind = false;
    // Watch receivers are made only on the slow paths: most deliveries never wait.
    loop {
        if shared.cancel.is_cancelled() {
            return Outcome::HandBack(Box::new(item));
        }
        // Fail closed: without a known kill state nothing is delivered.
        if !shared.gates.is_ready() {
            waited_blind = true;
            let mut ready = shared.gates.ready_rx();
            let mut to_rx = to.subscribe();
            tokio::select! {
                _ = ready.wait_for(|r| *r) => {}
                _ = to_rx.changed() => {}
                _ = shared.cancel.cancelled() => {}
            }
            continue;
        }
        // What cut this replica off may have moved the consumer's pin: then another replica
        // received this intent too and may have acted on it (rejected it while the sender was
        // killed, say: the chaos soak saw 11 such intents delivered after the sender's resume).
        // An intent the consumer counts as acknowledged is not acted on again.
        if waited_blind {
            match still_ours(&shared, &item).await {
                Ownership::Ours => waited_blind = false,
                Ownership::Superseded(why) => {
                    tracing::info!(seq = item.seq, to = %item.to, from = %item.from, why, "intent acknowledged elsewhere while this replica could not tell kills; not acting on it again");
                    return Outcome::Done;
                }
                Ownership::Unknown(why) => {
                    tracing::debug!(
                        seq = item.seq,
                        why,
                        "cannot tell whether the intent is still this replica's; waiting"
                    );
                    if last_progress.elapsed() >= cfg.ack_wait / 3 {
                        let _ = item.msg.ack_with(AckKind::Progress).await;
                        last_progress = Instant::now();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shared.cancel.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(cfg.max_retry_backoff);
                    continue;
                }
            }
        }
        let flight = InFlight::enter(from.clone(), to.clone());
        if to.is_killed() {
            shared.metrics.held.inc();
            return Outcome::HandBack(Box::new(item));
        }
        let killed = match from.state() {
            GateState::Killed { reason, .. } => Some(reason),
            GateState::Active { .. } => None,
        };
        if killed.is_some() || !item.admitted {
            drop(flight);
            let verdict = match killed {
                Some(reason) => Verdict::Refuse(Refusal::Forbidden(format!(
                    "sender {} is killed: {reason}",
                    item.from
                ))),
                None => admit(&shared, &item, &from).await,
            };
            match verdict {
                Verdict::Deliver => {
                    item.admitted = true;
                    continue;
                }
                Verdict::Recheck => continue,
                Verdict::Retry(why) => {
                    tracing::warn!(seq = item.seq, why, "policy check could not run; retrying");
                }
                Verdict::Refuse(refusal) => match shared
                    .rejector
                    .reject(
                        &item.msg,
                        Some(&item.from),
                        &item.intent_id,
                        item.seq,
                        &refusal,
                    )
                    .await
                {
                    Ok(()) => return Outcome::Done,
                    Err(e) => {
                        tracing::warn!(error = %e, seq = item.seq, "rejection not recorded; retrying");
                    }
                },
            }
        } else {
            let started = Instant::now();
            let counted = shared.metrics.in_flight();
            let result = shared
                .client
                .send_request(
                    shared.subjects.inbox(&item.to),
                    async_nats::Request::new()
                        .headers(delivery_headers(&item, attempt))
                        .payload(item.msg.payload.clone())
                        .timeout(Some(cfg.request_timeout)),
                )
                .await;
            drop(flight);
            drop(counted);
            match result {
                Ok(_reply) => {
                    Metrics::observe(&shared.metrics.delivery_seconds, started.elapsed());
                    shared.activity.received(&item.to);
                    if let Err(e) = item.msg.ack().await {
                        // The agent has it; a redelivery will be deduplicated by intent id.
                        tracing::warn!(error = %e, seq = item.seq, "ack after delivery failed");
                    }
                    // After the ack: a scrape that sees the count sees the ack sent, too.
                    shared.metrics.delivered.inc();
                    return Outcome::Done;
                }
                Err(e) => {
                    let (why, label) = match e.kind() {
                        RequestErrorKind::NoResponders => {
                            ("no instance serves the inbox", "no_responders")
                        }
                        RequestErrorKind::TimedOut => {
                            ("the agent did not reply in time", "timeout")
                        }
                        _ => ("the request failed", "error"),
                    };
                    shared.metrics.failed(label);
                    tracing::debug!(to = %item.to, seq = item.seq, attempt, why, "delivery failed");
                    if on_failure == OnFailure::GiveBack {
                        return Outcome::Unreachable(Box::new(item));
                    }
                    attempt += 1;
                }
            }
        }
        if last_progress.elapsed() >= cfg.ack_wait / 3 {
            let _ = item.msg.ack_with(AckKind::Progress).await;
            last_progress = Instant::now();
        }
        let (mut from_rx, mut to_rx) = (from.subscribe(), to.subscribe());
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = to_rx.changed() => {}
            _ = from_rx.changed() => {}
            _ = shared.cancel.cancelled() => {}
        }
        backoff = (backoff * 2).min(cfg.max_retry_backoff);
    }
}

/// Whether an intent is still this replica's to act on.
enum Ownership {
    Ours,
    /// Acknowledged already (by another replica that received it too).
    Superseded(&'static str),
    /// The consumer's info could not be read.
    Unknown(String),
}

/// Reads the consumer `item` came from: the intent is superseded when the ack floor has passed
/// it, so another replica acted on it (a floor never passes an unacknowledged intent). A
/// consumer that is gone leaves the decision as it was before this check (deliver).
///
/// The consumer's pinned client would say more (it names the replica that holds the pin now),
/// but a replica re-pinned under a new id cannot tell its own new pin from another's here, and
/// leaving its own intents for `ack_wait` would let newer ones overtake them.
async fn still_ours(shared: &Shared, item: &Item) -> Ownership {
    let Ok(info) = item.msg.info() else {
        return Ownership::Ours;
    };
    let stream = match shared.js.get_stream_no_info(info.stream).await {
        Ok(s) => s,
        Err(e) => return Ownership::Unknown(e.to_string()),
    };
    let consumer = match stream.consumer_info(info.consumer).await {
        Ok(c) => c,
        Err(e) if crate::setup::is_not_found(&e) => return Ownership::Ours,
        Err(e) => return Ownership::Unknown(e.to_string()),
    };
    if item.seq < crate::setup::first_unacked(&consumer) {
        Ownership::Superseded("acknowledged by another replica")
    } else {
        Ownership::Ours
    }
}

fn delivery_headers(item: &Item, attempt: u32) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MESH_INTENT_ID, item.intent_id.as_str());
    h.insert(MESH_FROM, item.from.as_str());
    h.insert(MESH_ACTION, item.action.as_str());
    // Nearly every delivery is the first attempt: no number formatting for it.
    match attempt {
        1 => h.insert(MESH_ATTEMPT, "1"),
        n => h.insert(MESH_ATTEMPT, n.to_string().as_str()),
    }
    h
}

/// What the policy checks decided for one intent.
enum Verdict {
    Deliver,
    /// Something changed while waiting (the sender's gate): check the gates again.
    Recheck,
    /// The checks could not run (counters unavailable): wait and try again, deliver nothing.
    Retry(String),
    Refuse(Refusal),
}

/// Runs the policy checks once per intent: allowed actions, the sender's rate (waits), then its
/// caps and ceilings (counted mesh-wide before delivery).
async fn admit(shared: &Shared, item: &Item, from: &Gate) -> Verdict {
    use crate::policy::actions;
    use mesh_schemas::OnBreach;

    if !shared.policies.is_ready() {
        return Verdict::Retry("policies not loaded yet".to_string());
    }
    let from_policy = shared.policies.effective(&item.from);
    let to_policy = shared.policies.effective(&item.to);
    if let Err(why) = actions::check(&item.from, &from_policy, &item.to, &to_policy, &item.action) {
        return Verdict::Refuse(Refusal::Forbidden(format!("not allowed by policy: {why}")));
    }
    if let Some(rate) = from_policy.rate {
        // Throttle by waiting: the sender's queue does not advance, nothing is dropped. The
        // bucket is mesh-wide, whichever replica delivers.
        let mut from_rx = from.subscribe();
        if from.is_killed() {
            return Verdict::Recheck;
        }
        tokio::select! {
            taken = shared.rates.acquire(&item.from, rate, from_policy.policy.burst) => {
                if let Err(e) = taken {
                    return Verdict::Retry(e.to_string());
                }
            }
            _ = from_rx.changed() => return Verdict::Recheck,
            _ = shared.cancel.cancelled() => return Verdict::Recheck,
        }
    }
    if !from_policy.has_caps() {
        return Verdict::Deliver;
    }
    let reported = shared.health.reported_cost(&item.from);
    let breach = match shared
        .budget
        .claim(&item.from, &from_policy, item.cost, reported)
        .await
    {
        Ok(Ok(())) => return Verdict::Deliver,
        Ok(Err(breach)) => breach,
        Err(e) => return Verdict::Retry(e.to_string()),
    };
    let on_breach = from_policy.policy.on_breach.unwrap_or_default();
    shared.metrics.breach(
        breach.rule,
        match on_breach {
            OnBreach::Kill => "kill",
            OnBreach::Block => "block",
            OnBreach::Observe => "observe",
        },
    );
    match on_breach {
        OnBreach::Kill => {
            crate::policy::autokill::kill(shared, &item.from, breach.rule, &breach.detail).await;
            Verdict::Refuse(Refusal::Forbidden(format!(
                "sender {} is killed: policy {}: {}",
                item.from, breach.rule, breach.detail
            )))
        }
        OnBreach::Block => Verdict::Refuse(Refusal::Limited(breach.detail)),
        OnBreach::Observe => {
            observe(shared, &item.from, breach.rule, &breach.detail).await;
            Verdict::Deliver
        }
    }
}

/// Records what an `observe` policy would have done, once per agent, rule and hour.
async fn observe(shared: &Shared, from: &AgentId, rule: &str, detail: &str) {
    let hour = mesh_schemas::now_unix_ms() / 3_600_000;
    let dedup = format!("observe-{from}-{rule}-{hour}");
    if !shared.budget.first_observation(dedup.clone()).await {
        return;
    }
    let mut event = mesh_schemas::AuditEvent::new(
        mesh_schemas::AuditKind::Observe,
        from.as_str(),
        format!("policy:{rule}"),
        format!("observe: would have acted on {rule}: {detail}"),
    );
    event.detail = Some(format!("rule={rule}"));
    if let Err(e) = shared.rejector.audit(&event, &dedup).await {
        tracing::warn!(error = %e, "could not record an observation");
    }
}
