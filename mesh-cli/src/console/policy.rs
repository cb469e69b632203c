//! `GET|PUT|DELETE /api/policies/{key}`: an agent's policy or the mesh-wide `_default`, as
//! `mesh-cli policy get|set|rm` reads and changes it: validated before it is written (an error
//! names the field), written with compare-and-set, confirmed by every live gateway replica,
//! recorded in the audit trail with who changed it from what to what.
//!
//! `PUT` replaces the key's policy with exactly the fields of the body (as `policy set`
//! without `--merge`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use mesh_schemas::Policy;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Reader, Writer};
use super::error::ErrorBody;
use super::switch::parse;
use super::{ApiError, AppState};
use crate::cmd::policy::{self as cmd, View, FIELDS};
use crate::policies::{Change, Edit};

/// What a change did.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyAnswer {
    /// What `mesh-cli policy set --json` prints: key, from, to, by, revision, confirmed,
    /// replicas.
    #[schema(value_type = Object)]
    pub change: Change,
    /// The sentence `mesh-cli policy set` prints.
    pub summary: String,
    /// Whether every live replica confirmed that it applies the change.
    pub complete: bool,
}

fn key(key: &str) -> Result<String, ApiError> {
    mesh_schemas::AgentId::new(key)
        .map(|_| key.to_string())
        .map_err(|e| ApiError::BadAgent {
            id: key.to_string(),
            problem: format!("{e} (or `_default`, the mesh-wide default)"),
        })
}

/// Reads a policy body: only known fields, each of the right type and a value that can work.
pub fn policy_body(body: &[u8]) -> Result<Policy, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object of policy fields".into(),
        ));
    };
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::BadField {
            field: unknown.clone(),
            problem: format!("not a policy field ({})", FIELDS.join(", ")),
        });
    }
    let policy: Policy = parse(body)?;
    if policy == Policy::default() {
        return Err(ApiError::BadRequest(
            "no policy field given; to remove the policy, DELETE it".into(),
        ));
    }
    policy.validate().map_err(ApiError::policy)?;
    Ok(policy)
}

/// A policy, with the default under it and the effective result.
#[utoipa::path(get, path = "/api/policies/{key}", tag = "policies",
    params(("key" = String, Path, description = "an agent id, or `_default`")),
    responses(
        (status = 200, description = "what `mesh-cli policy get --json` prints", body = Object),
        (status = 400, description = "not an agent id", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get(
    _: Reader,
    State(state): State<AppState>,
    Path(k): Path<String>,
) -> Result<Json<View>, ApiError> {
    let k = key(&k)?;
    Ok(Json(cmd::view(&state.mesh, &k).await?))
}

/// Sets a policy: exactly the fields of the body.
#[utoipa::path(put, path = "/api/policies/{key}", tag = "policies",
    params(("key" = String, Path, description = "an agent id, or `_default`")),
    request_body(content = Object, description = "policy fields, e.g. {\"max_intents_per_hour\": 500, \"on_breach\": \"kill\"}"),
    responses(
        (status = 200, description = "written; `complete` says whether every live replica applies it", body = PolicyAnswer),
        (status = 400, description = "bad key, or a bad field (named in `field`)", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put(
    Writer(by): Writer,
    State(state): State<AppState>,
    Path(k): Path<String>,
    body: Bytes,
) -> Result<Json<PolicyAnswer>, ApiError> {
    let k = key(&k)?;
    let policy = policy_body(&body)?;
    edit(&state, &k, &by, "policy set from the console", Some(policy)).await
}

/// Removes a policy (an agent then follows the default).
#[utoipa::path(delete, path = "/api/policies/{key}", tag = "policies",
    params(("key" = String, Path, description = "an agent id, or `_default`")),
    responses(
        (status = 200, description = "removed (or there was none: `revision` is null)", body = PolicyAnswer),
        (status = 400, description = "not an agent id", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    Writer(by): Writer,
    State(state): State<AppState>,
    Path(k): Path<String>,
) -> Result<Json<PolicyAnswer>, ApiError> {
    let k = key(&k)?;
    edit(&state, &k, &by, "policy removed from the console", None).await
}

async fn edit(
    state: &AppState,
    key: &str,
    by: &str,
    reason: &str,
    to: Option<Policy>,
) -> Result<Json<PolicyAnswer>, ApiError> {
    let edit = Edit {
        key,
        by,
        reason: reason.to_string(),
        timeout: state.mesh.cfg.fence_timeout,
    };
    let change = edit.apply(&state.mesh, |_| Ok(to.clone())).await?;
    tracing::info!(key, by, revision = ?change.revision, "console policy change");
    Ok(Json(PolicyAnswer {
        summary: change.summary(),
        complete: change.confirmed,
        change,
    }))
}
