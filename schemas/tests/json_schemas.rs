//! The JSON Schema files in `schemas/json/` are generated from the Rust types; this test fails
//! when they are stale. Regenerate with `MESH_UPDATE_SCHEMAS=1 cargo test -p mesh-schemas`.

use std::path::PathBuf;

use mesh_schemas::{
    AuditEvent, ControlNotice, FenceAck, GatewayPresence, KillRecord, RejectionNotice,
};

fn generated() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("kill-record", schemars::schema_for!(KillRecord)),
        ("audit-event", schemars::schema_for!(AuditEvent)),
        ("rejection-notice", schemars::schema_for!(RejectionNotice)),
        ("control-notice", schemars::schema_for!(ControlNotice)),
        ("gateway-presence", schemars::schema_for!(GatewayPresence)),
        ("fence-ack", schemars::schema_for!(FenceAck)),
        (
            "policy-record",
            schemars::schema_for!(mesh_schemas::PolicyRecord),
        ),
        (
            "activity-record",
            schemars::schema_for!(mesh_schemas::ActivityRecord),
        ),
        (
            "health-record",
            schemars::schema_for!(mesh_schemas::HealthRecord),
        ),
    ]
}

#[test]
fn json_schema_files_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
    let update = std::env::var_os("MESH_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, schema) in generated() {
        let path = dir.join(format!("{name}.schema.json"));
        let text = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
        if update {
            std::fs::write(&path, &text).expect("write schema file");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale JSON Schema files {stale:?}: run MESH_UPDATE_SCHEMAS=1 cargo test -p mesh-schemas"
    );
}
