//! Parking and unparking a recipient: moving its inbound work between the shared delivery lane
//! ([`crate::data::lane`]) and a durable consumer of its own, `in_<id>` ([`crate::data::drain`]).
//!
//! Parking creates the recipient's consumer at the first intent the shared lane has not
//! delivered, with the few later ones it had delivered already listed as a skip list in the
//! consumer's metadata; from then on the shared lane skips the recipient's intents.
//!
//! Unparking is decided by the shared lane when it meets an unpark marker at stream sequence
//! `K`: the recipient's intents before `K` went to its consumer, those after `K` the lane will
//! deliver itself. That is safe only if the consumer has acknowledged every intent before `K`,
//! which NATS can tell: its ack floor, and the first intent to the recipient after the floor.

use std::sync::Arc;

use async_nats::jetstream::stream::RawMessageErrorKind;
use mesh_schemas::AgentId;

use crate::setup::{self, SetupError};
use crate::shared::Shared;

/// Parks `to` from stream sequence `start`; `skip` lists later sequences delivered already.
/// The consumer is created paused exactly when `to` is killed, under the gate's hold lock: a
/// kill or resume that lands meanwhile sets the hold after the consumer exists (see
/// `killwatch::fence`), so the pause always ends up matching the latest flag.
pub async fn park(
    shared: &Arc<Shared>,
    to: &AgentId,
    start: u64,
    skip: &[u64],
) -> Result<(), SetupError> {
    let stream = &shared.objects.intents;
    {
        let gate = shared.gates.get(to);
        let _hold = gate.hold_lock().await;
        let killed = gate.is_killed();
        setup::create_parked_consumer(stream, &shared.cfg, to, start, skip, killed).await?;
    }
    // Every replica starts a drain for it (they also find it by listing consumers).
    if let Err(e) = shared
        .client
        .publish(shared.subjects.parked(to), bytes::Bytes::new())
        .await
    {
        tracing::debug!(%to, error = %e, "could not announce a parked recipient");
    }
    Ok(())
}

/// Whether `to` can leave its own consumer at the marker with stream sequence `marker`; when it
/// can, its consumer is deleted and `true` returned.
pub async fn try_unpark(
    shared: &Arc<Shared>,
    to: &AgentId,
    marker: u64,
) -> Result<bool, SetupError> {
    if shared.gates.get(to).is_killed() {
        return Ok(false);
    }
    let stream = &shared.objects.intents;
    let name = shared.cfg.names.inbound_consumer(to);
    let consumer_error = |e: Box<dyn std::error::Error + Send + Sync>| SetupError::Consumer {
        name: name.clone(),
        source: e,
    };
    let info = match stream.consumer_info(&name).await {
        Ok(info) => info,
        Err(e) if setup::is_not_found(&e) => return Ok(true),
        Err(e) => return Err(consumer_error(Box::new(e))),
    };
    // Everything before its first unacknowledged sequence is done; the next intent to `to` from
    // there must not be older than the marker.
    let first_from = |seq: u64| first_intent_to(stream, shared, to, seq);
    if first_from(setup::first_unacked(&info))
        .await
        .map_err(|e| consumer_error(Box::new(e)))?
        .is_some_and(|next| next < marker)
    {
        return Ok(false);
    }
    // Intents to `to` stored after the marker: while the shared consumer's pin changes, two
    // replicas' lanes work for a moment, and the other one may already have acknowledged them
    // as parked (most likely how a rolling restart lost 42 intents). Only the consumer still
    // has them, so it stays; the drain delivers them and asks again later.
    if first_from(marker + 1)
        .await
        .map_err(|e| consumer_error(Box::new(e)))?
        .is_some()
    {
        return Ok(false);
    }
    match stream.delete_consumer(&name).await {
        Ok(_) => Ok(true),
        // Gone already: nothing of `to` waits in it any more.
        Err(e) if setup::hold_failure(&e) == setup::HoldFailure::Gone => Ok(true),
        Err(e) => Err(consumer_error(Box::new(e))),
    }
}

/// The stream sequence of the first intent to `to` stored at or after `seq`, if any.
async fn first_intent_to(
    stream: &async_nats::jetstream::stream::Stream,
    shared: &Shared,
    to: &AgentId,
    seq: u64,
) -> Result<Option<u64>, async_nats::jetstream::stream::RawMessageError> {
    match stream
        .raw_message_builder()
        .sequence(seq)
        .next_by_subject(shared.subjects.intents_to(to))
        .send()
        .await
    {
        Ok(m) => Ok(Some(m.sequence)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e),
    }
}
