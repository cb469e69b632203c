//! The records the mesh itself writes: kill flags, audit events, notices, presence and fences.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::id::AgentId;

/// Whether an agent may act.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KillState {
    /// The agent may send and receive.
    Active,
    /// Nothing is delivered to or from the agent.
    Killed,
}

/// The value of `mesh-kill[<id>]`. No key at all means the agent is active.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct KillRecord {
    pub state: KillState,
    /// Why: echoed in every rejection while killed.
    #[serde(default)]
    pub reason: String,
    /// Who wrote the record (operator `user@host`, or `policy:<name>` for an automatic kill).
    #[serde(default)]
    pub by: String,
    /// When, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub at_unix_ms: u64,
}

impl KillRecord {
    /// A kill record written now.
    pub fn killed(reason: impl Into<String>, by: impl Into<String>) -> Self {
        KillRecord {
            state: KillState::Killed,
            reason: reason.into(),
            by: by.into(),
            at_unix_ms: crate::now_unix_ms(),
        }
    }

    /// A resume record written now.
    pub fn active(reason: impl Into<String>, by: impl Into<String>) -> Self {
        KillRecord {
            state: KillState::Active,
            reason: reason.into(),
            by: by.into(),
            at_unix_ms: crate::now_unix_ms(),
        }
    }
}

/// What an audit event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditKind {
    Kill,
    Resume,
    Autokill,
    Policy,
    Reject,
    Stale,
    Gateway,
    /// A policy in `observe` mode would have acted.
    Observe,
    /// Health changed (degraded, unreachable, healthy again).
    Health,
    /// Credentials issued to an agent or revoked (`reason` says which; `detail` has the keys).
    Credentials,
}

impl AuditKind {
    /// The subject token, e.g. `kill`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Kill => "kill",
            AuditKind::Resume => "resume",
            AuditKind::Autokill => "autokill",
            AuditKind::Policy => "policy",
            AuditKind::Reject => "reject",
            AuditKind::Stale => "stale",
            AuditKind::Gateway => "gateway",
            AuditKind::Observe => "observe",
            AuditKind::Health => "health",
            AuditKind::Credentials => "credentials",
        }
    }
}

/// One record of the audit trail, on `<prefix>.audit.<kind>.<agent>` in stream `MESH_AUDIT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct AuditEvent {
    pub kind: AuditKind,
    /// The agent the event is about (for a rejection: the sender).
    pub agent: String,
    pub at_unix_ms: u64,
    /// Who acted: an operator, a policy, or a gateway replica.
    pub actor: String,
    #[serde(default)]
    pub reason: String,
    /// Intents held for the agent when the event happened (kill, resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// The intent concerned (reject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<String>,
    /// The intent's subject (reject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// 400, 403 or 429 (reject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Gateway replicas that confirmed a kill or resume, and how long the fence took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_ms: Option<f64>,
    /// Free-form detail: for a policy change, `{"from": …, "to": …}` as JSON; for an automatic
    /// kill or an observation, the rule and the count that crossed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event with the required fields; set the optional ones on the result.
    pub fn new(
        kind: AuditKind,
        agent: impl Into<String>,
        actor: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        AuditEvent {
            kind,
            agent: agent.into(),
            at_unix_ms: crate::now_unix_ms(),
            actor: actor.into(),
            reason: reason.into(),
            pending: None,
            intent_id: None,
            subject: None,
            status: None,
            replicas: None,
            fence_ms: None,
            detail: None,
        }
    }
}

/// The body of a notice on `<prefix>.agent.<sender>.rejected`. The same facts are in the headers
/// `Mesh-Status`, `Mesh-Reason` and `Mesh-Intent-Id`, for agents that do not decode MessagePack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct RejectionNotice {
    pub intent_id: String,
    pub subject: String,
    pub status: u16,
    pub reason: String,
    pub at_unix_ms: u64,
}

impl RejectionNotice {
    pub fn new(
        intent_id: impl Into<String>,
        subject: impl Into<String>,
        status: u16,
        reason: impl Into<String>,
    ) -> Self {
        RejectionNotice {
            intent_id: intent_id.into(),
            subject: subject.into(),
            status,
            reason: reason.into(),
            at_unix_ms: crate::now_unix_ms(),
        }
    }
}

/// A kill or resume notice on `<prefix>.agent.<id>.control`, for cooperative agents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct ControlNotice {
    pub agent: AgentId,
    pub state: KillState,
    pub reason: String,
    pub by: String,
    pub at_unix_ms: u64,
}

impl ControlNotice {
    pub fn new(agent: AgentId, record: &KillRecord) -> Self {
        ControlNotice {
            agent,
            state: record.state,
            reason: record.reason.clone(),
            by: record.by.clone(),
            at_unix_ms: crate::now_unix_ms(),
        }
    }
}

/// A gateway replica's presence, the value of `mesh-gateways[<gateway id>]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct GatewayPresence {
    pub id: String,
    pub version: String,
    pub host: String,
    pub pid: u32,
    pub started_unix_ms: u64,
    /// Refreshed every `interval_ms`; a record older than three intervals is a dead replica.
    pub at_unix_ms: u64,
    pub interval_ms: u64,
}

impl GatewayPresence {
    /// A presence record refreshed now.
    pub fn new(
        id: impl Into<String>,
        version: impl Into<String>,
        host: impl Into<String>,
        pid: u32,
        started_unix_ms: u64,
        interval_ms: u64,
    ) -> Self {
        GatewayPresence {
            id: id.into(),
            version: version.into(),
            host: host.into(),
            pid,
            started_unix_ms,
            at_unix_ms: crate::now_unix_ms(),
            interval_ms,
        }
    }

    /// Whether the replica refreshed its record recently enough to count as live at `now`.
    pub fn is_live(&self, now_unix_ms: u64) -> bool {
        now_unix_ms.saturating_sub(self.at_unix_ms) <= self.interval_ms.saturating_mul(3)
    }
}

/// A replica's confirmation, on `<prefix>.gw.fenced.<id>`, that it enforces kill-flag revision
/// `revision` of agent `agent`: its in-flight deliveries to and from the agent are finished, and
/// inbound work that reached it stays held, unacknowledged, until the agent is resumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct FenceAck {
    pub gateway: String,
    pub agent: AgentId,
    pub revision: u64,
    pub state: KillState,
    /// Inbound intents this replica handed back to JetStream (NAK); 0 since held work is kept
    /// in order instead. Kept for compatibility.
    #[serde(default)]
    pub handed_back: u64,
    /// Microseconds from the replica seeing the change to this confirmation.
    #[serde(default)]
    pub took_us: u64,
}

impl FenceAck {
    pub fn new(
        gateway: impl Into<String>,
        agent: AgentId,
        revision: u64,
        state: KillState,
    ) -> Self {
        FenceAck {
            gateway: gateway.into(),
            agent,
            revision,
            state,
            handed_back: 0,
            took_us: 0,
        }
    }
}

/// Health of an agent, from its heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthState {
    /// Heartbeats on time.
    Healthy,
    /// Heartbeats late (past `degraded_after`).
    Degraded,
    /// Silent past `unreachable_after`; its intents wait.
    Unreachable,
    /// Killed (the kill flag says so).
    Killed,
    /// Never heard from.
    Unknown,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Unreachable => "unreachable",
            HealthState::Killed => "killed",
            HealthState::Unknown => "unknown",
        }
    }
}

/// The value of `mesh-health[<id>]`, written by the gateway replica that leads health checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct HealthRecord {
    pub agent: String,
    pub state: HealthState,
    /// Instances heard from within `unreachable_after`.
    pub instances: u32,
    /// Last heartbeat from any instance, ms since the epoch (0: never).
    pub last_heartbeat_unix_ms: u64,
    /// Cost reported by heartbeats (sum over instances of `Mesh-Cost-Total`).
    pub reported_cost_usd: f64,
    pub at_unix_ms: u64,
}

impl HealthRecord {
    pub fn new(
        agent: impl Into<String>,
        state: HealthState,
        instances: u32,
        last_heartbeat_unix_ms: u64,
        reported_cost_usd: f64,
    ) -> Self {
        HealthRecord {
            agent: agent.into(),
            state,
            instances,
            last_heartbeat_unix_ms,
            reported_cost_usd,
            at_unix_ms: crate::now_unix_ms(),
        }
    }
}

/// The value of `mesh-activity[<id>.<gateway>]`: what one gateway replica has seen of an agent
/// on the data path, so that `mesh-cli status` lists every agent that sent or was sent an
/// intent, including one that never sent a heartbeat. Each replica writes its own key, at most
/// once per interval per agent; readers take the latest of each field over the replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct ActivityRecord {
    pub agent: String,
    /// The replica that wrote it.
    pub gateway: String,
    /// When the agent last published an intent that this replica took in (the intent's
    /// stream timestamp), ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_unix_ms: Option<u64>,
    /// When an intent to the agent was last published (stream timestamp), delivered or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_addressed_unix_ms: Option<u64>,
    /// When the agent last acknowledged a delivery from this replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_received_unix_ms: Option<u64>,
    pub at_unix_ms: u64,
}

impl ActivityRecord {
    pub fn new(agent: impl Into<String>, gateway: impl Into<String>) -> Self {
        ActivityRecord {
            agent: agent.into(),
            gateway: gateway.into(),
            at_unix_ms: crate::now_unix_ms(),
            ..ActivityRecord::default()
        }
    }
}
