//! Wire types of Agent Mesh: everything that crosses NATS between agents, gateways and operators.
//!
//! This crate is a leaf: serde types and parsers, no I/O. Agents in other languages can rely on
//! the JSON Schema files generated from these types into `schemas/json/`.
//!
//! # Layout
//!
//! - [`id`]: [`AgentId`], the validated agent name (one NATS subject token).
//! - [`subjects`]: [`Subjects`], prefix-aware builders and parsers for every subject the mesh uses.
//! - [`names`]: [`MeshNames`], stream, bucket and consumer names.
//! - [`headers`]: the header names of the contract and the intent-id rule.
//! - [`records`]: kill records, audit events, rejection and control notices, gateway presence and
//!   fence acknowledgements.
//! - [`policy`]: per-agent policies, their validation, merging and action globs.
//! - [`codec`]: MessagePack on the wire, JSON accepted on read, JSON for people.
//!
//! # Compatibility
//!
//! Records are encoded as MessagePack maps with field names, so adding an optional field is a
//! compatible change; enums are `#[non_exhaustive]` and readers keep unknown fields out of the way.
//! Removing or renaming a field is a breaking change and bumps the minor version before 1.0.

#![forbid(unsafe_code)]

pub mod codec;
pub mod headers;
pub mod id;
pub mod names;
pub mod policy;
pub mod records;
pub mod subjects;

pub use codec::{decode, encode, CodecError};
pub use id::{AgentId, InvalidAgentId};
pub use names::MeshNames;
pub use policy::{OnBreach, OnUnreachable, Policy, PolicyError, PolicyRecord, Rate};
pub use records::{
    ActivityRecord, AuditEvent, AuditKind, ControlNotice, FenceAck, GatewayPresence, HealthRecord,
    HealthState, KillRecord, KillState, RejectionNotice,
};
pub use subjects::{IntentSubject, SubjectError, Subjects};

/// Milliseconds since the Unix epoch, the timestamp of every record.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
