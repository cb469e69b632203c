//! The replica's shared context: what every task of one gateway replica (shared lane, drains,
//! kill watch, presence, policies, health, metrics) reads and updates. It holds handles and
//! state, not behaviour: the data path lives in [`crate::data`], the control path in
//! [`crate::control`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use mesh_schemas::{AgentId, Subjects};
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::control::gate::Gates;
use crate::data::reject::Rejector;
use crate::setup::MeshObjects;

/// What every task of a replica shares.
pub struct Shared {
    pub cfg: Arc<GatewayConfig>,
    pub subjects: Subjects,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub objects: MeshObjects,
    pub gates: Arc<Gates>,
    pub rejector: Rejector,
    pub gateway_id: String,
    /// Cancelled when the gateway drains.
    pub cancel: CancellationToken,
    /// Recipients with a worker in this replica.
    pub workers: std::sync::Mutex<HashSet<AgentId>>,
    /// Every worker task, so that a drain can wait for them to hand their work back.
    pub tracker: tokio_util::task::TaskTracker,
    /// Policies, hot-reloaded.
    pub policies: Arc<crate::policy::PolicyBook>,
    /// Per-sender rate buckets (mesh-wide, in `mesh-counters`).
    pub rates: crate::policy::rate::RateLimits,
    /// Mesh-wide caps and ceilings.
    pub budget: crate::policy::budget::Budget,
    /// Heartbeats and health.
    pub health: Arc<crate::health::HealthView>,
    /// Agents seen as senders or recipients, written to `mesh-activity` for status.
    pub activity: Arc<crate::data::activity::Activity>,
    /// Ids of the live replicas (this one included), sorted; refreshed by presence.
    pub live: std::sync::Mutex<Vec<String>>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Shared {
    /// How many replicas share the work (at least 1).
    pub fn live_replicas(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(1)
    }

    /// Whether this replica leads mesh-wide chores (health): the live replica with the
    /// smallest id.
    pub fn is_leader(&self) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .is_none_or(|first| *first == self.gateway_id)
    }

    /// Waits `d`; returns true when the gateway is stopping.
    pub async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.cancel.cancelled() => true,
        }
    }

    /// Whether this replica runs a worker for `id`.
    pub fn has_worker(&self, id: &AgentId) -> bool {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }
}
