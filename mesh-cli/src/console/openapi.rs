//! The API's OpenAPI 3.1 description, generated from the handlers' annotations (utoipa) and
//! served at `GET /openapi.json` (no token needed: it holds no data). A copy is committed at
//! `docs/openapi.json`; a test fails when it is stale.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Agent Mesh console API", description = "Kill, resume, policies, status and the audit trail of an Agent Mesh, as `mesh-cli console` serves them. Every route needs `Authorization: Bearer <token>` (reads can be opened with console_open_reads)."),
    paths(
        super::agents::list,
        super::agents::one,
        super::switch::kill,
        super::switch::resume,
        super::policy::get,
        super::policy::put,
        super::policy::delete,
        super::audit::history,
        super::audit::events,
    ),
    components(schemas(
        super::error::ErrorBody,
        super::agents::AgentDetail,
        super::switch::KillRequest,
        super::switch::ResumeRequest,
        super::switch::SwitchAnswer,
        super::policy::PolicyAnswer,
        crate::cmd::status::Status,
        crate::cmd::status::AgentStatus,
        crate::cmd::status::GatewayStatus,
    )),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the paths refer to.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The description as pretty JSON, as committed.
pub fn json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make the committed copy stale at every release.
    doc.info.version = "1".to_string();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<serde_json::Value> {
    Json(serde_json::from_str(&json()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed copy matches the code. Regenerate with
    /// `MESH_UPDATE_SCHEMAS=1 cargo test -p mesh-cli openapi`.
    #[test]
    fn the_committed_openapi_description_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let now = json() + "\n";
        if std::env::var_os("MESH_UPDATE_SCHEMAS").is_some() {
            std::fs::write(path, &now).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/openapi.json is stale: run MESH_UPDATE_SCHEMAS=1 cargo test -p mesh-cli openapi"
        );
        let doc: serde_json::Value = serde_json::from_str(&now).expect("JSON");
        for route in [
            "/api/agents",
            "/api/agents/{id}",
            "/api/agents/{id}/kill",
            "/api/agents/{id}/resume",
            "/api/policies/{key}",
            "/api/audit",
            "/api/events",
        ] {
            assert!(doc["paths"][route].is_object(), "{route} is not described");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
