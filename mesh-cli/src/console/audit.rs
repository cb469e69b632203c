//! `GET /api/audit`: the audit trail with filters (agent, kind, since, limit), oldest first, as
//! `mesh-cli audit --json` prints it.
//! `GET /api/events`: the audit trail live, as Server-Sent Events (one event per audit record,
//! named by its kind; data is the record as JSON), after a first `ready` event that says the
//! stream follows the trail from then on.

use std::convert::Infallible;
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::Reader;
use super::error::{agent_id, ErrorBody};
use super::{ApiError, AppState};
use crate::events::{self, Entry, Filter, Follow};

/// Most events one history answer holds.
pub const MAX_LIMIT: usize = 10_000;

/// Filters of the audit trail.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only events about this agent.
    pub agent: Option<String>,
    /// Only events of this kind: kill, resume, autokill, policy, observe, health, reject, stale,
    /// gateway, credentials.
    pub kind: Option<String>,
    /// Only events from this long ago on, e.g. 90s, 1h, 2d (history only).
    pub since: Option<String>,
    /// At most the last N events (history only; default 200, at most 10000).
    pub limit: Option<usize>,
}

impl AuditQuery {
    fn filter(&self) -> Result<Filter, ApiError> {
        let agent = self.agent.as_deref().map(agent_id).transpose()?;
        let kind = self
            .kind
            .as_deref()
            .map(|k| {
                crate::cmd::audit::kind(k).map_err(|problem| ApiError::BadField {
                    field: "kind".into(),
                    problem,
                })
            })
            .transpose()?;
        Ok(Filter { agent, kind })
    }
}

fn query(q: Result<Query<AuditQuery>, QueryRejection>) -> Result<AuditQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))
}

/// Stored audit events matching the filters, oldest first.
#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "what `mesh-cli audit --json` prints", body = Vec<Object>),
        (status = 400, description = "a bad filter", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn history(
    _: Reader,
    State(state): State<AppState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<Entry>>, ApiError> {
    let q = query(q)?;
    let filter = q.filter()?;
    let since = q
        .since
        .as_deref()
        .map(|s| {
            humantime::parse_duration(s).map_err(|e| ApiError::BadField {
                field: "since".into(),
                problem: format!("{s:?} is not a duration such as 90s, 1h, 2d: {e}"),
            })
        })
        .transpose()?
        .map(|d| {
            SystemTime::now()
                .checked_sub(d)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
    let limit = q.limit.unwrap_or(200);
    if limit > MAX_LIMIT {
        return Err(ApiError::BadField {
            field: "limit".into(),
            problem: format!("at most {MAX_LIMIT}"),
        });
    }
    Ok(Json(
        events::history(&state.mesh, &filter, since, limit).await?,
    ))
}

/// Audit events live, as Server-Sent Events.
#[utoipa::path(get, path = "/api/events", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "text/event-stream: a `ready` event, then one event per audit record named by its kind (kill, resume, policy, reject, …) with the record as JSON data", content_type = "text/event-stream", body = String),
        (status = 400, description = "a bad filter", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn events(
    _: Reader,
    State(state): State<AppState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = query(q)?.filter()?;
    let follow = Follow::start(&state.mesh, &filter).await?;
    let ready = Event::default()
        .event("ready")
        .data(filter.subject(&state.mesh.subjects));
    let live = futures::stream::unfold(follow, |mut follow| async move {
        match follow.next().await {
            Some(Ok(entry)) => Some((event(&entry), follow)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "console event stream ended");
                None
            }
            None => None,
        }
    });
    let mut stopping = state.stopping.clone();
    let stopped = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let stream = futures::stream::once(async move { Ok(ready) })
        .chain(live.map(Ok))
        .take_until(stopped);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn event(entry: &Entry) -> Event {
    let kind = entry.event.kind.as_str();
    match Event::default().event(kind).json_data(entry) {
        Ok(e) => e.id(entry.seq.to_string()),
        Err(e) => Event::default()
            .event("error")
            .data(format!("could not encode audit event {}: {e}", entry.seq)),
    }
}
