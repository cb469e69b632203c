//! Health from heartbeats (placeholder: filled in by the health work).

use std::sync::Arc;

use mesh_schemas::AgentId;

use crate::worker::Shared;

/// This replica's view of every agent's heartbeats.
#[derive(Debug, Default)]
pub struct HealthView {}

impl HealthView {
    /// Cost reported by `id`'s instances since its counters were last reset, in USD.
    pub fn reported_cost(&self, _id: &AgentId) -> f64 {
        0.0
    }

    /// Forgets `id`'s health and reported cost (on resume).
    pub fn reset(&self, _id: &AgentId) {}
}

/// Follows heartbeats and judges health until the gateway stops.
pub async fn run(shared: Arc<Shared>) {
    shared.cancel.cancelled().await;
}
