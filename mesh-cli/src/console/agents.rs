//! `GET /api/agents`: the `mesh-cli status` report (agents and gateway replicas).
//! `GET /api/agents/{id}`: one agent's line with its recent audit events.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Reader;
use super::error::{agent_id, ErrorBody};
use super::{ApiError, AppState};
use crate::cmd::status::{self, AgentStatus, Status};
use crate::events::{self, Entry, Filter};

/// How many of an agent's audit events its detail shows.
pub const RECENT_EVENTS: usize = 50;

/// One agent in detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentDetail {
    /// Its line of the status table.
    pub agent: AgentStatus,
    /// Its last audit events, oldest first (at most 50).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Entry>,
}

/// The status table.
#[utoipa::path(get, path = "/api/agents", tag = "agents",
    responses(
        (status = 200, description = "every known agent and gateway replica", body = Status),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list(_: Reader, State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    Ok(Json(status::read(&state.mesh).await?))
}

/// One agent with its recent audit events.
#[utoipa::path(get, path = "/api/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent id: 1 to 64 of A-Z a-z 0-9 _ -")),
    responses(
        (status = 200, description = "the agent", body = AgentDetail),
        (status = 400, description = "not an agent id", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such agent known", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn one(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AgentDetail>, ApiError> {
    let id = agent_id(&id)?;
    let report = status::read(&state.mesh).await?;
    let agent = report
        .agents
        .into_iter()
        .find(|a| a.agent == id.as_str())
        .ok_or_else(|| ApiError::UnknownAgent(id.to_string()))?;
    let filter = Filter {
        agent: Some(id),
        kind: None,
    };
    let events = events::history(&state.mesh, &filter, None, RECENT_EVENTS).await?;
    Ok(Json(AgentDetail { agent, events }))
}
