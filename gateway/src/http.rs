//! The replica's HTTP endpoints for Prometheus and Kubernetes, on `metrics_addr`:
//!
//! - `GET /metrics`: the text exposition of [`crate::metrics::Metrics`];
//! - `GET /healthz`: 200 while the process serves at all (liveness);
//! - `GET /readyz`: 200 only while the replica may deliver (NATS connected, kill flags and
//!   policies replayed and current, not draining); 503 while it fails closed, and before it
//!   has started.
//!
//! A few routes, GET only, `Connection: close`: a small HTTP/1.1 responder on tokio rather than
//! a web framework, which would add a dozen crates to a gateway that serves three paths to a
//! scraper and a kubelet. Each connection gets a deadline and a bounded request head, and runs
//! on its own task, so a slow client never holds the others.
//!
//! [`serve`] takes its listener, so a test binds port 0 and reads the port back.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use mesh_schemas::HealthState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Snapshot};
use crate::shared::Shared;

/// Largest request head read; anything longer is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request and take the answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long a scrape waits for the shared consumer's info (the role).
const ROLE_LOOKUP: Duration = Duration::from_secs(1);

/// What the endpoints read: the metrics from the start, the replica once it runs.
#[derive(Clone)]
pub struct Observed {
    pub metrics: Arc<Metrics>,
    /// Set once the replica is wired; until then the replica is not ready.
    pub replica: Arc<OnceLock<Arc<Shared>>>,
}

impl Observed {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Observed {
            metrics,
            replica: Arc::new(OnceLock::new()),
        }
    }

    /// The states now; all false before the replica is wired.
    pub async fn snapshot(&self) -> Snapshot {
        match self.replica.get() {
            Some(shared) => snapshot(shared).await,
            None => Snapshot::default(),
        }
    }
}

/// Serves `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, observed: Observed, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let observed = observed.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(DEADLINE, answer(stream, &observed))
                .await
                .is_err()
            {
                tracing::debug!("metrics client too slow; connection dropped");
            }
        });
    }
}

/// Reads one request and answers it.
async fn answer(mut stream: TcpStream, observed: &Observed) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            let _ = respond(&mut stream, 431, "text/plain", "request head too large\n").await;
            return;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        let _ = respond(&mut stream, 405, "text/plain", "GET only\n").await;
        return;
    }
    let (status, kind, body) = match path {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => {
            let snap = observed.snapshot().await;
            if snap.ready() {
                (200, "text/plain", "ready\n".to_string())
            } else {
                (503, "text/plain", not_ready(&snap))
            }
        }
        "/metrics" => {
            let snap = observed.snapshot().await;
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                observed.metrics.render(&snap),
            )
        }
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    let body = if method == "HEAD" { "" } else { body.as_str() };
    let _ = respond(&mut stream, status, kind, body).await;
}

/// Why the replica is not ready, one reason a line.
fn not_ready(snap: &Snapshot) -> String {
    let mut why = String::from("not ready:\n");
    if !snap.nats_connected {
        why.push_str("- not connected to NATS\n");
    }
    if !snap.kill_state_known {
        why.push_str("- kill state not known (failing closed)\n");
    }
    if !snap.policies_known {
        why.push_str("- policies not loaded\n");
    }
    if snap.draining {
        why.push_str("- draining\n");
    }
    why
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads the replica's states.
async fn snapshot(shared: &Shared) -> Snapshot {
    let mut health: Vec<(&'static str, usize)> = [
        HealthState::Healthy,
        HealthState::Degraded,
        HealthState::Unreachable,
        HealthState::Killed,
        HealthState::Unknown,
    ]
    .iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    for id in shared.health.agents() {
        let state = shared.health.state(&id).as_str();
        if let Some(slot) = health.iter_mut().find(|(s, _)| *s == state) {
            slot.1 += 1;
        }
    }
    let killed = shared
        .gates
        .known()
        .iter()
        .filter(|id| shared.gates.get(id).is_killed())
        .count();
    let parked = shared
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let shared_lane = shared_lane(shared).await;
    Snapshot {
        active: shared_lane.as_ref().map(|(active, _)| *active),
        pending: shared_lane.map(|(_, pending)| pending),
        nats_connected: shared.client.connection_state()
            == async_nats::connection::State::Connected,
        kill_state_known: shared.gates.is_ready(),
        policies_known: shared.policies.is_ready(),
        draining: shared.cancel.is_cancelled(),
        parked,
        killed,
        health,
    }
}

/// Whether the shared consumer is pinned to this replica (its pin id is the one this replica's
/// lane last received with), and its pending and unacknowledged counts. `None` when the
/// consumer cannot be read.
async fn shared_lane(shared: &Shared) -> Option<(bool, (u64, u64))> {
    let name = shared.cfg.names.delivery_consumer();
    let lookup = async {
        let mut consumer = shared
            .objects
            .intents
            .get_consumer::<pull::Config>(&name)
            .await
            .ok()?;
        consumer.info().await.ok().cloned()
    };
    let info = tokio::time::timeout(ROLE_LOOKUP, lookup).await.ok()??;
    let mine = shared.metrics.pin_id();
    let pinned = info
        .priority_groups
        .iter()
        .find_map(|g| g.pinned_client_id.clone());
    let unacked = u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
    let pending = (info.num_pending, unacked);
    Some((mine.is_some() && pinned == mine, pending))
}
