//! The Agent Mesh gateway: the chokepoint between agents. It consumes intents from JetStream and
//! delivers each to its recipient only while the kill flags of both ends are clear.
//!
//! # Layout
//!
//! Two paths, each a folder:
//! - [`data`], the data path (intent stream → shared lane, or a parked recipient's drain →
//!   agent inbox): the shared lane, parking and unparking, the drains of parked recipients,
//!   one intent's delivery, deliveries in flight, rejections, activity.
//! - [`control`], the control path (KV watch → gates → fence): the kill watch and its fence,
//!   the per-agent gates and fail-closed readiness, this replica's presence.
//!
//! What both read: [`shared`], the replica's context (handles, gates, policies, health,
//! metrics). Beside the paths: [`policy`] (the policy book, allowed actions, rates, caps and
//! ceilings, automatic kills), [`health`] (heartbeats, health states, alerts), [`metrics`] and
//! [`http`] (`/metrics`, `/healthz`, `/readyz`), [`server_version`] (the nats-server releases
//! the mesh supports). Around them: [`config`] (layered configuration), [`setup`] (streams,
//! buckets, consumers) and [`run`], which wires a replica together and drains it on shutdown.
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod data;
pub mod health;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod server_version;
pub mod setup;
pub mod shared;

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, GatewayConfig};
pub use setup::{MeshObjects, SetupError};

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("invalid subject prefix: {0}")]
    Prefix(#[from] mesh_schemas::SubjectError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs one gateway replica on `client` until `shutdown` resolves, then drains: stops pulling,
/// lets in-flight deliveries finish for up to `drain_grace`, hands the rest back to JetStream.
/// Serves metrics and probes on `metrics_addr` when it is set.
///
/// While JetStream cannot create or read the mesh's streams and buckets (a cluster still
/// electing), it retries with backoff and logs why ([`setup::ensure_ready`]); a shutdown
/// meanwhile returns `Ok` at once.
pub async fn run(
    client: async_nats::Client,
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    cfg.validate()?;
    let listener = match cfg.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Metrics { addr, source })?,
        ),
        None => None,
    };
    run_with_listener(client, cfg, listener, shutdown).await
}

/// [`run`], serving metrics and probes on `listener` (if any) instead of `metrics_addr`: a test
/// binds port 0 and reads the port from the listener.
pub async fn run_with_listener(
    client: async_nats::Client,
    cfg: GatewayConfig,
    listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    cfg.validate()?;
    let metrics = Arc::new(metrics::Metrics::new());
    let observed = http::Observed::new(metrics.clone());
    // Up before the streams are set up, so that /healthz answers (and /readyz says 503) while
    // NATS is not there yet.
    let http_cancel = CancellationToken::new();
    let _http_stop = http_cancel.clone().drop_guard();
    if let Some(listener) = listener {
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, "serving /metrics, /healthz and /readyz"),
            Err(e) => tracing::warn!(error = %e, "metrics listener has no address"),
        }
        tokio::spawn(http::serve(listener, observed.clone(), http_cancel));
    }
    let js = jetstream::new(client.clone());
    tokio::pin!(shutdown);
    let objects = tokio::select! {
        objects = setup::ensure_ready(&js, &cfg) => objects?,
        () = &mut shutdown => {
            tracing::info!("stopped before the mesh's streams and buckets were ready");
            return Ok(());
        }
    };
    // Connected for sure now (JetStream answered), so the server's INFO is in.
    server_version::warn_if_needed(&client);
    let budget_kv = objects.counters.clone();
    let subjects = cfg.names.subjects()?;
    let gateway_id = cfg.gateway_id();
    let cancel = CancellationToken::new();
    let shared = Arc::new(shared::Shared {
        rejector: data::reject::Rejector {
            client: client.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            gateway_id: gateway_id.clone(),
            metrics: metrics.clone(),
        },
        cfg: Arc::new(cfg),
        subjects,
        client: client.clone(),
        js,
        objects,
        gates: Arc::new(control::gate::Gates::default()),
        gateway_id: gateway_id.clone(),
        cancel: cancel.clone(),
        workers: std::sync::Mutex::new(Default::default()),
        tracker: tokio_util::task::TaskTracker::new(),
        policies: Arc::new(policy::PolicyBook::default()),
        rates: policy::rate::RateLimits::new(budget_kv.clone()),
        budget: policy::budget::Budget::new(budget_kv),
        health: Arc::new(health::HealthView::default()),
        activity: Arc::new(data::activity::Activity::default()),
        live: std::sync::Mutex::new(Vec::new()),
        metrics,
    });
    // The endpoints read this replica from now on.
    let _ = observed.replica.set(shared.clone());
    tracing::info!(gateway = %gateway_id, "gateway starting");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::killwatch::run(shared.clone()));
    tasks.spawn(control::presence::run(shared.clone()));
    tasks.spawn(data::lane::run(shared.clone()));
    tasks.spawn(data::discover::run(shared.clone()));
    tasks.spawn(policy::book::run(shared.clone()));
    tasks.spawn(health::run(shared.clone()));
    tasks.spawn(data::activity::run(
        shared.activity.clone(),
        shared.objects.activity.clone(),
        gateway_id.clone(),
        cancel.clone(),
    ));

    shutdown.await;
    tracing::info!(gateway = %gateway_id, "draining");
    cancel.cancel();
    let grace = shared.cfg.drain_grace;
    let drained = tokio::time::timeout(grace, async {
        while tasks.join_next().await.is_some() {}
        // Wait until every worker has handed its work back.
        shared.tracker.close();
        shared.tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "drain grace expired; unacknowledged intents return after the ack wait"
        );
    }
    let _ = client.flush().await;
    tracing::info!(gateway = %gateway_id, "gateway stopped");
    Ok(())
}
