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

use crate::gate::{Gate, GateState, InFlight};
use crate::reject::Refusal;
use crate::worker::Shared;

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
}

/// How a delivery ended.
pub enum Outcome {
    /// Acknowledged by the agent, or rejected with a record: the intent is finished.
    Done,
    /// The recipient was killed, or the gateway is stopping: hand the intent back (NAK).
    HandBack(Box<Item>),
}

/// Delivers `item`, retrying until it is done or must be handed back.
pub async fn deliver(shared: Arc<Shared>, item: Item, from: Arc<Gate>, to: Arc<Gate>) -> Outcome {
    let cfg = &shared.cfg;
    let mut attempt = item.delivered.max(1);
    let mut backoff = Duration::from_millis(50);
    let mut last_progress = Instant::now();
    let mut ready = shared.gates.ready_rx();
    let mut from_rx = from.subscribe();
    let mut to_rx = to.subscribe();
    loop {
        if shared.cancel.is_cancelled() {
            return Outcome::HandBack(Box::new(item));
        }
        // Fail closed: without a known kill state nothing is delivered.
        if !*ready.borrow_and_update() {
            tokio::select! {
                _ = ready.changed() => {}
                _ = to_rx.changed() => {}
                _ = shared.cancel.cancelled() => {}
            }
            continue;
        }
        let flight = InFlight::enter(from.clone(), to.clone());
        if to.is_killed() {
            return Outcome::HandBack(Box::new(item));
        }
        if let GateState::Killed { reason, .. } = from.state() {
            drop(flight);
            let refusal = Refusal::Forbidden(format!("sender {} is killed: {reason}", item.from));
            match shared
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
            }
        } else {
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
            match result {
                Ok(_reply) => {
                    if let Err(e) = item.msg.ack().await {
                        // The agent has it; a redelivery will be deduplicated by intent id.
                        tracing::warn!(error = %e, seq = item.seq, "ack after delivery failed");
                    }
                    return Outcome::Done;
                }
                Err(e) => {
                    let why = match e.kind() {
                        RequestErrorKind::NoResponders => "no instance serves the inbox",
                        RequestErrorKind::TimedOut => "the agent did not reply in time",
                        _ => "the request failed",
                    };
                    tracing::debug!(to = %item.to, seq = item.seq, attempt, why, "delivery will be retried");
                    attempt += 1;
                }
            }
        }
        if last_progress.elapsed() >= cfg.ack_wait / 3 {
            let _ = item.msg.ack_with(AckKind::Progress).await;
            last_progress = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = to_rx.changed() => {}
            _ = from_rx.changed() => {}
            _ = shared.cancel.cancelled() => {}
        }
        backoff = (backoff * 2).min(cfg.max_retry_backoff);
    }
}

fn delivery_headers(item: &Item, attempt: u32) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MESH_INTENT_ID, item.intent_id.as_str());
    h.insert(MESH_FROM, item.from.as_str());
    h.insert(MESH_ACTION, item.action.as_str());
    h.insert(MESH_ATTEMPT, attempt.to_string().as_str());
    h
}
