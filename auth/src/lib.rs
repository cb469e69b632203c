//! Identity for Agent Mesh: who may connect to NATS as what, and what NATS lets each role do.
//!
//! The kill switch only holds if an agent cannot act past the gateway. NATS enforces that:
//! every agent, gateway and operator connects with credentials of its own, and the server
//! refuses what the role's permissions do not allow.
//!
//! # Layout
//!
//! - [`connect`]: connection options shared by the gateway, mesh-cli, mesh-agent and the
//!   test harness (URL list, creds file, nkey seed, user/password, token, TLS, inbox prefix).

#![forbid(unsafe_code)]

pub mod connect;
