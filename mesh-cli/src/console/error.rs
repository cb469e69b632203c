//! [`ApiError`]: why a request was refused or failed, as a JSON body
//! `{"error": "<sentence>", "kind": "<kind>", "field": "<field>"}` with a status that says
//! whose fault it is (4xx: the request's; 503: the mesh did not answer).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{CliError, Report};

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer …` header.
    #[error("no bearer token: send `Authorization: Bearer <token>` (the console's tokens are its console_token setting, MESH_CONSOLE_TOKEN)")]
    NoToken,
    /// A token that is not one of the console's.
    #[error("the bearer token is not one of the console's tokens")]
    BadToken,
    /// An agent id that cannot be one.
    #[error("bad agent id {id:?}: {problem}")]
    BadAgent { id: String, problem: String },
    /// An agent no bucket, stream or consumer of the mesh knows.
    #[error("no agent {0:?} is known to the mesh")]
    UnknownAgent(String),
    /// A request field with a value that cannot work; `field` names it.
    #[error("{field}: {problem}")]
    BadField { field: String, problem: String },
    /// A request that cannot be read at all.
    #[error("{0}")]
    BadRequest(String),
    /// No such route.
    #[error("no such route: {0}")]
    NoRoute(String),
    /// The mesh refused or did not answer.
    #[error(transparent)]
    Mesh(#[from] CliError),
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a sentence.
    pub error: String,
    /// A stable word for scripts: `no_token`, `bad_token`, `bad_agent`, `unknown_agent`,
    /// `bad_field`, `bad_request`, `no_route`, `usage`, `mesh`.
    pub kind: &'static str,
    /// The request field at fault, for `bad_field`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The stable word of [`ErrorBody::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::NoToken => "no_token",
            ApiError::BadToken => "bad_token",
            ApiError::BadAgent { .. } => "bad_agent",
            ApiError::UnknownAgent(_) => "unknown_agent",
            ApiError::BadField { .. } => "bad_field",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NoRoute(_) => "no_route",
            ApiError::Mesh(e) if e.exit_code() == crate::exit::USAGE => "usage",
            ApiError::Mesh(_) => "mesh",
        }
    }

    /// 401 without a valid token, 400 for a bad request, 404 for nothing there, 503 when the
    /// mesh did not do what was asked.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NoToken | ApiError::BadToken => StatusCode::UNAUTHORIZED,
            ApiError::BadAgent { .. } | ApiError::BadField { .. } | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::UnknownAgent(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::Mesh(e) if e.exit_code() == crate::exit::USAGE => StatusCode::BAD_REQUEST,
            ApiError::Mesh(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A field error from a policy validation.
    pub fn policy(e: mesh_schemas::PolicyError) -> ApiError {
        ApiError::BadField {
            field: e.field.to_string(),
            problem: e.problem,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %format!("{:#}", Report(&self)), "console request failed");
        }
        let body = ErrorBody {
            error: format!("{:#}", Report(&self)),
            kind: self.kind(),
            field: match &self {
                ApiError::BadField { field, .. } => Some(field.clone()),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The fallback: a JSON 404 naming the path.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_string())
}

/// Parses an agent id from a path, or says why it is not one.
pub fn agent_id(id: &str) -> Result<mesh_schemas::AgentId, ApiError> {
    mesh_schemas::AgentId::new(id).map_err(|e| ApiError::BadAgent {
        id: id.to_string(),
        problem: e.to_string(),
    })
}
