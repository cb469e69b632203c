//! The Agent Mesh gateway: the chokepoint between agents. It consumes intents from JetStream and
//! delivers each to its recipient only while the kill flags of both ends are clear.
//!
//! # Layout
//!
//! - [`config`]: layered configuration (defaults, file, `MESH_*`, flags) and its validation.
//! - [`setup`]: creates or checks streams, buckets and per-recipient consumers.
pub mod config;
pub mod setup;

pub use config::{ConfigError, GatewayConfig};
pub use setup::{MeshObjects, SetupError};
