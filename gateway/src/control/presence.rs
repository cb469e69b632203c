//! Presence: each replica refreshes its record in the `mesh-gateways` bucket every interval, so
//! that `mesh-cli kill` knows which replicas must confirm a fence. A replica that stops
//! refreshing is dead after three intervals; a clean shutdown deletes the record at once.
//!
//! The record is a lease: a kill waits only for replicas whose record is fresh, so a replica
//! delivers only while it can prove it is listed. It stops two intervals after it sent its last
//! write that succeeded, one interval before others may count it dead (a margin for clocks and
//! scheduling), and delivers again once a write succeeds.

use std::sync::Arc;

use mesh_schemas::{encode, now_unix_ms, GatewayPresence};

use crate::shared::Shared;

/// Refreshes this replica's presence until the gateway stops, then deletes it.
pub async fn run(shared: Arc<Shared>) {
    let started = now_unix_ms();
    let interval = shared.cfg.presence_interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut lease_until = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.cancel.cancelled() => break,
        }
        if tokio::time::Instant::now() >= lease_until {
            lapse(&shared);
        }
        let record = GatewayPresence::new(
            shared.gateway_id.clone(),
            env!("CARGO_PKG_VERSION"),
            crate::config::hostname(),
            std::process::id(),
            started,
            shared.cfg.presence_interval.as_millis() as u64,
        );
        let bytes = match encode(&record) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode presence");
                continue;
            }
        };
        let sent = tokio::time::Instant::now();
        let put = shared
            .objects
            .gateways
            .put(&shared.gateway_id, bytes.into());
        // At most half an interval, so that the lease is checked on time.
        match tokio::time::timeout(interval / 2, put).await {
            Ok(Ok(_)) => {
                lease_until = sent + interval * 2;
                if !shared.gates.is_listed() {
                    tracing::info!("presence written; this replica is listed");
                }
                shared.gates.set_listed(true);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not refresh presence"),
            Err(_) => tracing::warn!(?interval, "could not refresh presence: no answer in time"),
        }
        if tokio::time::Instant::now() >= lease_until {
            lapse(&shared);
        }
        // Bounded too: a listing that hangs (seen for 10 s on nats-server 2.11 after a node
        // loss) would hold up the next refresh and let the lease lapse.
        match tokio::time::timeout(interval, live_replicas(&shared.objects.gateways)).await {
            Ok(Ok(live)) => *shared.live.lock().unwrap_or_else(|e| e.into_inner()) = live,
            Ok(Err(e)) => tracing::warn!(error = %e, "could not list live replicas"),
            Err(_) => tracing::warn!(?interval, "could not list live replicas: no answer in time"),
        }
    }
    if let Err(e) = shared.objects.gateways.delete(&shared.gateway_id).await {
        tracing::warn!(error = %e, "could not delete presence on shutdown");
    }
}

/// The lease ran out: kills may no longer wait for this replica, so it stops delivering.
fn lapse(shared: &Shared) {
    if shared.gates.is_listed() {
        tracing::error!(
            "presence not refreshed in time: kills may not wait for this replica; \
             delivering nothing until it is written again"
        );
    }
    shared.gates.set_listed(false);
}

/// Ids of the replicas whose presence is fresh, sorted.
pub async fn live_replicas(
    kv: &async_nats::jetstream::kv::Store,
) -> Result<Vec<String>, async_nats::Error> {
    use futures::StreamExt;
    let now = now_unix_ms();
    let mut keys = kv.keys().await?;
    let mut live = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        if let Some(v) = kv.get(&key).await? {
            if let Ok(p) = mesh_schemas::decode::<GatewayPresence>(&v) {
                if p.is_live(now) {
                    live.push(p.id);
                }
            }
        }
    }
    live.sort();
    Ok(live)
}
