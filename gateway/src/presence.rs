//! Presence: each replica refreshes its record in the `mesh-gateways` bucket every interval, so
//! that `mesh-cli kill` knows which replicas must confirm a fence. A replica that stops
//! refreshing is dead after three intervals; a clean shutdown deletes the record at once.

use std::sync::Arc;

use mesh_schemas::{encode, now_unix_ms, GatewayPresence};

use crate::worker::Shared;

/// Refreshes this replica's presence until the gateway stops, then deletes it.
pub async fn run(shared: Arc<Shared>) {
    let started = now_unix_ms();
    let mut tick = tokio::time::interval(shared.cfg.presence_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.cancel.cancelled() => break,
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
        if let Err(e) = shared
            .objects
            .gateways
            .put(&shared.gateway_id, bytes.into())
            .await
        {
            tracing::warn!(error = %e, "could not refresh presence");
        }
        match live_replicas(&shared.objects.gateways).await {
            Ok(live) => *shared.live.lock().unwrap_or_else(|e| e.into_inner()) = live,
            Err(e) => tracing::warn!(error = %e, "could not list live replicas"),
        }
    }
    if let Err(e) = shared.objects.gateways.delete(&shared.gateway_id).await {
        tracing::warn!(error = %e, "could not delete presence on shutdown");
    }
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
