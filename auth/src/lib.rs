//! Identity for Agent Mesh: who may connect to NATS as what, and what NATS lets each role do.
//!
//! The kill switch only holds if an agent cannot act past the gateway. NATS enforces that:
//! every agent, gateway and operator connects with credentials of its own (decentralized JWT:
//! an operator, a system account and a mesh account), and the server refuses whatever the
//! role's permissions do not allow. Agents are issued by a scoped signing key whose template
//! the server expands with the agent's id, so adding one needs no server change or reload.
//!
//! # Layout
//!
//! - [`authdir`]: the auth directory: keys, trusted credentials, the record of issued agent
//!   credentials, the nats-server include file.
//! - [`permissions`]: the permission set of each role and the inbox prefixes.
//! - [`jwt`]: operator, account and user JWTs, signed with nkeys.
//! - [`creds`]: the `.creds` file format.
//! - [`mintable`]: which agent ids may hold credentials.
//! - [`push`]: sends an updated account JWT to the servers (revocation).
//! - [`connect`]: connection options shared by the gateway, mesh-cli, mesh-agent and the
//!   test harness (URL list, creds file, nkey seed, user/password, token, TLS, inbox prefix):
//!   [`connect::NatsConnection`] as configured, [`connect::NatsConnection::prepare`] into
//!   async-nats options, [`connect::Prepared::connect`] with a deadline.
//!   - `connect/servers.rs`: the comma-separated URL list, split and checked; `redact`.
//!   - `connect/files.rs`: creds, nkey seed and TLS files, read and parsed up front.
//!   - `connect/secret.rs`: [`connect::Secret`], a password or token `Debug` never shows.
//! - [`error`]: [`AuthError`], what can go wrong.

#![forbid(unsafe_code)]

pub mod authdir;
pub mod connect;
pub mod creds;
pub mod error;
pub mod jwt;
pub mod mintable;
pub mod permissions;
pub mod push;

pub use authdir::{AuthDir, Issued, NewCredential};
pub use error::AuthError;
pub use permissions::Permissions;
