//! The Grafana dashboard in `deploy/grafana/` charts only what the gateway exports: every
//! `mesh_gateway_*` name in its queries is a series of the gateway's `/metrics`, and each
//! metric the issue asks to see is charted.

use std::collections::BTreeSet;

use mesh_gateway::data::reject::Refusal;
use mesh_gateway::metrics::{Metrics, Snapshot};

const DASHBOARD: &str = include_str!("../../deploy/grafana/agent-mesh.json");

/// Every series name the gateway can expose, from the `# TYPE` lines of a render. A labelled
/// family is rendered only once it has a member, so each is given one first.
fn exported() -> BTreeSet<String> {
    let metrics = Metrics::new();
    metrics.rejected(&Refusal::Forbidden("killed".into()));
    metrics.breach("max_intents_per_hour", "kill");
    metrics.failed("timeout");
    let snapshot = Snapshot {
        active: Some(true),
        health: vec![("healthy", 1)],
        pending: Some((0, 0)),
        ..Snapshot::default()
    };
    let text = metrics.render(&snapshot);
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    names
}

/// Every `expr` of every panel target and every templating query.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `mesh_…` identifiers of a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("mesh_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn the_dashboard_queries_only_metrics_the_gateway_exports() {
    let exported = exported();
    assert!(
        exported.contains("mesh_gateway_intents_delivered_total"),
        "{exported:?}"
    );
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "too few queries: {exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "a query names no mesh metric: {expr}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{name} (in `{expr}`) is not a metric the gateway exports: {exported:?}"
            );
            used.insert(name);
        }
    }
    // What the issue asks to see: delivered, rejected, held, pending, in flight, both
    // latencies, breaches, health states, role, NATS connection, fail-closed state.
    for wanted in [
        "mesh_gateway_intents_delivered_total",
        "mesh_gateway_intents_rejected_total",
        "mesh_gateway_intents_held_total",
        "mesh_gateway_intents_pending",
        "mesh_gateway_parked_recipients",
        "mesh_gateway_deliveries_in_flight",
        "mesh_gateway_delivery_duration_seconds_bucket",
        "mesh_gateway_fence_duration_seconds_bucket",
        "mesh_gateway_policy_breaches_total",
        "mesh_gateway_agents_by_health",
        "mesh_gateway_role",
        "mesh_gateway_nats_connected",
        "mesh_gateway_kill_state_known",
        "mesh_gateway_ready",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not chart {wanted}"
        );
    }
}

#[test]
fn metric_names_are_read_from_expressions() {
    assert_eq!(
        metric_names("sum by (le) (rate(mesh_gateway_a_bucket{x=\"y\"}[5m])) / mesh_b"),
        vec!["mesh_gateway_a_bucket", "mesh_b"]
    );
    assert!(metric_names("rate(x_mesh_y[1m])").is_empty());
}
