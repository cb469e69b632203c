//! The names of the mesh's NATS objects (streams, buckets, consumers), in one place, so that the
//! gateway, mesh-cli and the tests agree and a team can rename all of them with one prefix.

use serde::{Deserialize, Serialize};

use crate::id::AgentId;
use crate::subjects::{SubjectError, Subjects};

/// Stream and bucket names plus the subject builder. `Default` gives the contract's names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshNames {
    /// Subject prefix, `mesh`.
    pub prefix: String,
    /// Intents stream, `MESH_INTENTS`.
    pub intents_stream: String,
    /// Audit stream, `MESH_AUDIT`.
    pub audit_stream: String,
    /// Kill flags, `mesh-kill`.
    pub kill_bucket: String,
    /// Policies, `mesh-policy`.
    pub policy_bucket: String,
    /// Agent health, `mesh-health`.
    pub health_bucket: String,
    /// Gateway presence, `mesh-gateways`.
    pub gateways_bucket: String,
    /// Mesh-wide policy counters (intents per window, cost), `mesh-counters`.
    pub counters_bucket: String,
    /// Agents seen on the data path (sent or were sent an intent), `mesh-activity`.
    pub activity_bucket: String,
}

impl Default for MeshNames {
    fn default() -> Self {
        MeshNames {
            prefix: crate::subjects::DEFAULT_PREFIX.to_string(),
            intents_stream: "MESH_INTENTS".to_string(),
            audit_stream: "MESH_AUDIT".to_string(),
            kill_bucket: "mesh-kill".to_string(),
            policy_bucket: "mesh-policy".to_string(),
            health_bucket: "mesh-health".to_string(),
            gateways_bucket: "mesh-gateways".to_string(),
            counters_bucket: "mesh-counters".to_string(),
            activity_bucket: "mesh-activity".to_string(),
        }
    }
}

impl MeshNames {
    /// The subject builder for this prefix.
    pub fn subjects(&self) -> Result<Subjects, SubjectError> {
        Subjects::new(self.prefix.clone())
    }

    /// The durable consumer that holds `id`'s inbound intents while `id` is parked (killed,
    /// unreachable or backlogged) and delivers them when it comes back.
    pub fn inbound_consumer(&self, id: &AgentId) -> String {
        format!("{}{id}", Self::INBOUND_PREFIX)
    }

    /// Name prefix of the per-recipient (parked) consumers.
    pub const INBOUND_PREFIX: &'static str = "in_";

    /// The shared durable consumer that delivers every intent of recipients that are not parked.
    pub fn delivery_consumer(&self) -> String {
        "mesh_deliver".to_string()
    }

    /// `<prefix>.event.<kind>.<id>`: alert events (degraded, unreachable, autokill).
    pub fn event_subject(&self, kind: &str, id: &str) -> String {
        format!("{}.event.{kind}.{id}", self.prefix)
    }

    /// The priority group every gateway replica pulls recipient consumers with.
    pub const PRIORITY_GROUP: &'static str = "mesh";
}
