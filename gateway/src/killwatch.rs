//! The control path: a KV watch of `mesh-kill` is the only source of kill state. Each change is
//! applied to the agent's gate, fenced (in-flight deliveries finished, held work handed back) and
//! confirmed on `mesh.gw.fenced.<id>`; the recipient's consumer is paused or resumed so that the
//! hold lives in NATS, not only here.
//!
//! Until the watch has replayed every flag, and whenever it breaks, the gateway delivers nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Entry, Operation};
use futures::StreamExt;
use mesh_schemas::{decode, encode, AgentId, FenceAck, KillRecord, KillState};

use crate::gate::GateState;
use crate::setup;
use crate::worker::Shared;

/// Runs until the gateway stops, re-establishing the watch whenever it breaks.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        shared.gates.set_ready(false);
        match watch_once(&shared).await {
            Ok(()) => return,
            Err(why) => {
                tracing::error!(
                    why,
                    "kill-flag watch broken; delivering nothing until it is back"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One watch: replay every flag, mark ready, then follow changes. `Ok` only on shutdown.
async fn watch_once(shared: &Arc<Shared>) -> Result<(), String> {
    let kv = &shared.objects.kill;
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| format!("cannot watch {}: {e}", shared.cfg.names.kill_bucket))?;
    let mut seen: HashSet<AgentId> = HashSet::new();
    let mut replaying = true;
    // An empty bucket replays nothing, so nothing would tell us the replay is over.
    let status = kv
        .status()
        .await
        .map_err(|e| format!("cannot read {}: {e}", shared.cfg.names.kill_bucket))?;
    if status.values() == 0 {
        finish_replay(shared, &seen);
        replaying = false;
    }
    loop {
        let entry = tokio::select! {
            e = watch.next() => e,
            _ = shared.cancel.cancelled() => return Ok(()),
            _ = disconnected(&shared.client) => {
                // Changes may have been missed while cut off: replay before delivering again.
                return Err("disconnected from NATS".to_string());
            }
        };
        let entry = match entry {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(format!("watch error: {e}")),
            None => return Err("watch ended".to_string()),
        };
        let caught_up = entry.delta == 0;
        if let Some(id) = apply(shared, &entry) {
            seen.insert(id);
        }
        if replaying && caught_up {
            finish_replay(shared, &seen);
            replaying = false;
        }
    }
}

/// Agents whose flag disappeared while the watch was down are active again.
fn finish_replay(shared: &Shared, seen: &HashSet<AgentId>) {
    for id in shared.gates.known() {
        if !seen.contains(&id) {
            shared.gates.get(&id).set(GateState::Active { revision: 0 });
        }
    }
    shared.gates.set_ready(true);
    tracing::info!(flags = seen.len(), "kill flags loaded; delivering");
}

/// Applies one change to the gate and starts its fence. Returns the agent it was about.
fn apply(shared: &Arc<Shared>, entry: &Entry) -> Option<AgentId> {
    let id = match AgentId::new(entry.key.clone()) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(key = entry.key, error = %e, "ignoring kill flag with an invalid key");
            return None;
        }
    };
    let revision = entry.revision;
    let state = match entry.operation {
        Operation::Delete | Operation::Purge => GateState::Active { revision },
        Operation::Put => match decode::<KillRecord>(&entry.value) {
            Ok(rec) if rec.state == KillState::Active => GateState::Active { revision },
            Ok(rec) => GateState::Killed {
                revision,
                reason: rec.reason,
            },
            Err(e) => {
                // Fail closed: an unreadable flag is a kill until an operator writes a good one.
                tracing::error!(agent = %id, revision, error = %e,
                    "unreadable kill record; treating the agent as killed until `mesh-cli kill` or `mesh-cli resume` rewrites it");
                GateState::Killed {
                    revision,
                    reason: format!("kill record unreadable ({e}); treated as killed"),
                }
            }
        },
    };
    let gate = shared.gates.get(&id);
    let was_killed = gate.is_killed();
    gate.set(state.clone());
    if was_killed && !state.is_killed() {
        // Resume: health starts afresh and this replica's unused cap claims are dropped
        // (mesh-cli resume resets the counters in KV).
        shared.health.reset(&id);
        let shared = shared.clone();
        let agent = id.clone();
        tokio::spawn(async move { shared.budget.forget(&agent).await });
    }
    tracing::info!(agent = %id, revision, killed = state.is_killed(), "kill flag applied");
    let shared = shared.clone();
    let agent = id.clone();
    tokio::spawn(async move { fence(shared, agent, state).await });
    Some(id)
}

/// Waits until this replica enforces `state`, confirms it, and applies the hold in NATS.
async fn fence(shared: Arc<Shared>, id: AgentId, state: GateState) {
    let started = Instant::now();
    let gate = shared.gates.get(&id);
    let revision = state.revision();
    if state.is_killed() {
        if shared.has_worker(&id) {
            gate.wait_drained(revision).await;
        }
        gate.wait_idle().await;
    }
    let mut ack = FenceAck::new(
        shared.gateway_id.clone(),
        id.clone(),
        revision,
        if state.is_killed() {
            KillState::Killed
        } else {
            KillState::Active
        },
    );
    ack.took_us = started.elapsed().as_micros() as u64;
    match encode(&ack) {
        Ok(bytes) => {
            if let Err(e) = shared
                .client
                .publish(shared.subjects.fenced(&id), bytes.into())
                .await
            {
                tracing::warn!(agent = %id, error = %e, "could not publish fence ack");
            }
        }
        Err(e) => tracing::warn!(agent = %id, error = %e, "could not encode fence ack"),
    }
    // The hold in NATS follows the latest state, whatever order these tasks finish in.
    let _guard = gate.hold_lock().await;
    let held = gate.is_killed();
    if let Err(e) = setup::set_hold(&shared.objects.intents, &shared.cfg, &id, held).await {
        tracing::warn!(agent = %id, held, error = %e, "could not update the consumer hold");
    }
}

/// Resolves when the connection to NATS is lost. async-nats reports no event to a client it
/// did not create, so this looks at the connection state a few times a second.
pub(crate) async fn disconnected(client: &async_nats::Client) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if client.connection_state() != async_nats::connection::State::Connected {
            return;
        }
    }
}
