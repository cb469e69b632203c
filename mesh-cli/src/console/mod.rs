//! `mesh-cli console`: an authenticated HTTP API over the mesh and a web console on it.
//!
//! The API reads what `mesh-cli status`, `policy get` and `audit` read, and writes through the
//! same code as `mesh-cli kill`, `resume` and `policy set|rm`: the kill switch's fence
//! ([`crate::switch`]) and the policies' compare-and-set with confirmations
//! ([`crate::policies`]). A write answers with the same facts the command prints with `--json`
//! (replicas confirmed, fence time, held work), and records the operator named by the bearer
//! token in the audit trail.
//!
//! # Layout
//!
//! - [`auth`]: the bearer tokens (`console_token`) and the extractors that check them.
//! - [`error`]: [`ApiError`], every refusal as a 4xx JSON body with a kind and a message.
//! - [`agents`]: `GET /api/agents` (the status table) and `GET /api/agents/{id}`.
//! - [`switch`]: `POST /api/agents/{id}/kill` and `/resume`.
//! - [`policy`]: `GET|PUT|DELETE /api/policies/{key}`.
//! - [`audit`]: `GET /api/audit` (history with filters) and `GET /api/events` (live, SSE).
//! - [`openapi`]: the OpenAPI description, generated from the handlers, at `/openapi.json`.
//! - [`assets`]: the web console (HTML, JS, CSS compiled into the binary) at `/`.
//!
//! [`serve`] takes its listener and its shutdown future, so a test binds port 0.

pub mod agents;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod error;
pub mod openapi;
pub mod policy;
pub mod switch;

use std::future::Future;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::Tokens;
pub use error::ApiError;

use crate::mesh::Mesh;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The mesh session every request uses (one NATS connection for the server).
    pub mesh: Arc<Mesh>,
    /// Who may call the API.
    pub tokens: Arc<Tokens>,
    /// Whether reads are open without a token (`console_open_reads`).
    pub open_reads: bool,
    /// Turns true when the server stops, so that live event streams end and the graceful
    /// shutdown does not wait for them forever.
    pub stopping: watch::Receiver<bool>,
}

/// The routes: the API under `/api`, the description at `/openapi.json`, the console at `/`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/agents", get(agents::list))
        .route("/api/agents/{id}", get(agents::one))
        .route("/api/agents/{id}/kill", post(switch::kill))
        .route("/api/agents/{id}/resume", post(switch::resume))
        .route(
            "/api/policies/{key}",
            get(policy::get).put(policy::put).delete(policy::delete),
        )
        .route("/api/audit", get(audit::history))
        .route("/api/events", get(audit::events))
        .route("/openapi.json", get(openapi::serve))
        .merge(assets::routes())
        .fallback(error::not_found)
        .with_state(state)
}

/// Serves `listener` until `shutdown` resolves; open event streams end then.
pub async fn serve(
    listener: TcpListener,
    mesh: Mesh,
    tokens: Tokens,
    open_reads: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let state = AppState {
        mesh: Arc::new(mesh),
        tokens: Arc::new(tokens),
        open_reads,
        stopping,
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("console stopping");
            let _ = stop.send(true);
        })
        .await
}
