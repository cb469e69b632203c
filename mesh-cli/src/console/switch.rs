//! `POST /api/agents/{id}/kill` and `POST /api/agents/{id}/resume`: the kill switch of
//! `mesh-cli kill` and `resume` ([`crate::switch::Switch`]), fenced the same way, answering with
//! the same facts (replicas confirmed, fence time, held work) and a sentence for people.
//!
//! The answer is 200 once the flag is written and in force; `complete` is false, and `problem`
//! says why, when some live replica did not confirm in time or a later step was not done (where
//! `mesh-cli` exits 3).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use mesh_schemas::KillState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Writer;
use super::error::{agent_id, ErrorBody};
use super::{ApiError, AppState};
use crate::error::Report;
use crate::switch::{Outcome, Switch};

/// A kill: why (required; echoed in every rejection while the agent is killed).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    pub reason: String,
}

/// A resume: why, optionally.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    #[serde(default)]
    pub reason: String,
}

/// What a kill or resume did.
#[derive(Debug, Serialize, ToSchema)]
pub struct SwitchAnswer {
    /// What `mesh-cli kill --json` prints: agent, state, reason, by, revision, confirmed,
    /// replicas {live, confirmed, missing, fence_ms}, pending, counters_reset, undone.
    #[schema(value_type = Object)]
    pub outcome: Outcome,
    /// The sentence `mesh-cli kill` prints.
    pub summary: String,
    /// Whether every live replica confirmed and every step was done.
    pub complete: bool,
    /// What is missing when not complete (the flag is in force all the same).
    pub problem: Option<String>,
}

/// Parses a JSON body, naming the field at fault.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." || field.is_empty() {
            // A missing or unknown field: serde names it in the message.
            let text = inner.to_string();
            match text.split('`').nth(1) {
                Some(name) => ApiError::BadField {
                    field: name.to_string(),
                    problem: text.clone(),
                },
                None => ApiError::BadRequest(format!("the body is not the JSON expected: {text}")),
            }
        } else {
            ApiError::BadField {
                field,
                problem: inner.to_string(),
            }
        }
    })
}

/// Kills an agent.
#[utoipa::path(post, path = "/api/agents/{id}/kill", tag = "switch",
    params(("id" = String, Path, description = "agent id")),
    request_body = KillRequest,
    responses(
        (status = 200, description = "the flag is written; `complete` says whether every live replica confirmed", body = SwitchAnswer),
        (status = 400, description = "bad agent id, or no reason", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 503, description = "the flag could not be written: nothing changed", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn kill(
    Writer(by): Writer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<SwitchAnswer>, ApiError> {
    let agent = agent_id(&id)?;
    let req: KillRequest = parse(&body)?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::BadField {
            field: "reason".into(),
            problem: "a kill needs a reason (it is echoed in every rejection and recorded)".into(),
        });
    }
    apply(&state, agent, KillState::Killed, req.reason, by).await
}

/// Resumes an agent.
#[utoipa::path(post, path = "/api/agents/{id}/resume", tag = "switch",
    params(("id" = String, Path, description = "agent id")),
    request_body(content = ResumeRequest, description = "optional; an empty body is no reason"),
    responses(
        (status = 200, description = "the flag is cleared; `complete` says whether every live replica confirmed", body = SwitchAnswer),
        (status = 400, description = "bad agent id", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 503, description = "the flag could not be written: nothing changed", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn resume(
    Writer(by): Writer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<SwitchAnswer>, ApiError> {
    let agent = agent_id(&id)?;
    let req: ResumeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ResumeRequest::default()
    } else {
        parse(&body)?
    };
    apply(&state, agent, KillState::Active, req.reason, by).await
}

async fn apply(
    state: &AppState,
    agent: mesh_schemas::AgentId,
    to: KillState,
    reason: String,
    by: String,
) -> Result<Json<SwitchAnswer>, ApiError> {
    let action = if to == KillState::Killed {
        "kill"
    } else {
        "resume"
    };
    let switch = Switch {
        agent,
        state: to,
        reason,
        by,
        timeout: state.mesh.cfg.fence_timeout,
    };
    let outcome = switch.apply(&state.mesh).await?;
    let problem = outcome
        .verdict(action, switch.timeout)
        .err()
        .map(|e| format!("{:#}", Report(&e)));
    tracing::info!(agent = %switch.agent, action, by = %switch.by, complete = problem.is_none(), "console switch");
    Ok(Json(SwitchAnswer {
        summary: outcome.summary(),
        complete: problem.is_none(),
        problem,
        outcome,
    }))
}
