//! Support for the integration tests: a mesh on a real `nats-server` (from `mesh-testkit`) with
//! gateway replicas as real `mesh-gateway` processes or in-process tasks, raw-NATS agents that
//! count what they receive, and operator actions (kill, resume) with the same fence protocol as
//! `mesh-cli`.
//!
//! Agents here use plain async-nats on purpose: the mesh promises that any NATS client works.
//!
//! # Layout
//!
//! - [`gateways`]: start, stop and SIGKILL gateway replicas.
//! - [`agents`]: inbox servers that record deliveries; senders.
//! - [`mesh`]: [`Mesh`], a secured nats-server with a client per role (agent, gateway,
//!   operator); open mode on request.
//! - [`operator`]: kill and resume with fence confirmation; audit reading.
//! - [`region`]: a second region, a leaf node of the hub, whose link can be cut.
//! - [`http`]: a plain HTTP GET, for a replica's `/metrics` and probes.
//! - [`cli`]: `mesh-cli` as a process.
//! - [`chaos`]: the chaos soak: random gateway, node and agent faults and policy changes on a
//!   three-node cluster, judged from deliveries, the stream and the audit trail.
//! - [`node_loss`]: the flood-and-kill scenario across the loss of a cluster node (a test runs
//!   it once, the `node-loss-loop` binary many times).

pub mod agents;
pub mod chaos;
pub mod cli;
pub mod gateways;
pub mod http;
pub mod mesh;
pub mod node_loss;
pub mod operator;
pub mod region;

pub use mesh::Mesh;

use std::time::Duration;

pub use mesh_testkit::NatsServer;

/// Default deadline of every wait in the tests: generous for a loaded 2-core CI machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Connects a fresh client (one per role, as real agents and operators would have).
pub async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
        .expect("connect to test nats-server")
}

/// Connects a fresh client that may use any of `urls` (the nodes of a cluster), so that it
/// reconnects to another node when its own is lost.
pub async fn connect_any(urls: &[String]) -> async_nats::Client {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| u.parse().expect("a nats-server URL"))
        .collect();
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(addrs.as_slice())
        .await
        .expect("connect to test nats-servers")
}

/// Returns once the server has processed `client`'s earlier subscriptions (`flush` only
/// writes the buffer): the server echoes a message the client sends to its own inbox, which
/// every role may do, agents included.
pub async fn registered(client: &async_nats::Client) {
    use futures::StreamExt;
    let subject = client.new_inbox();
    let mut echo = client
        .subscribe(subject.clone())
        .await
        .expect("subscribe to own inbox");
    client
        .publish(subject, bytes::Bytes::new())
        .await
        .expect("publish to own inbox");
    tokio::time::timeout(DEADLINE, echo.next())
        .await
        .expect("the server echoes in time")
        .expect("echo");
}

/// Polls `check` until it returns true or `DEADLINE` passes; the failure names `what`.
/// For conditions that have no event to await (state in another process).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The runtime of the scenario binaries (`node-loss-loop`, `chaos-soak`): the scenarios block on
/// process starts with `block_in_place`, which needs worker threads.
pub fn scenario_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` to choose).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
