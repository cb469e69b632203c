//! Identity for Agent Mesh: who may connect to NATS as what, and what NATS lets each role do.
//!
//! The kill switch only holds if an agent cannot act past the gateway. NATS enforces that:
//! every agent, gateway and operator connects with credentials of its own, and the server
//! refuses what the role's permissions do not allow.
//!
//! # Layout
//!
//! - [`connect`]: connection options shared by the gateway, mesh-cli, mesh-agent and the
//!   test harness (URL list, creds file, nkey seed, user/password, token, TLS, inbox prefix):
//!   [`connect::NatsConnection`] as configured, [`connect::NatsConnection::prepare`] into
//!   async-nats options, [`connect::Prepared::connect`] with a deadline.
//!   - `connect/servers.rs`: the comma-separated URL list, split and checked; `redact`.
//!   - `connect/files.rs`: creds, nkey seed and TLS files, read and parsed up front.
//!   - `connect/secret.rs`: [`connect::Secret`], a password or token `Debug` never shows.

#![forbid(unsafe_code)]

pub mod connect;
