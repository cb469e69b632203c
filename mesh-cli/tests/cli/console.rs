//! `mesh-cli console` against a real mesh (`mesh-cli up`: a secured nats-server and a gateway):
//! every API route, its refusals (no token, bad token, bad agent id, bad policy field), the
//! kill and resume through the fence with the operator in the audit trail, and the live event
//! stream.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::http::{call, call_text, Sse};
use crate::status::agent;
use crate::up::{build_gateway, start_up, stop};
use crate::BIN;

/// The test operator's token, as `MESH_CONSOLE_TOKEN` holds it.
pub const TOKEN: &str = "console-test-secret-0123456789";
/// A token the console does not know.
const WRONG: &str = "not-the-console-token-00000";
const DEADLINE: Duration = Duration::from_secs(30);

/// A running mesh with two agents (`deployer` sends to `billing`, both heartbeat) and a console
/// on it; the processes stop when this is dropped.
pub struct ConsoleMesh {
    pub url: String,
    up: Option<tokio::process::Child>,
    console: Option<tokio::process::Child>,
    _agents: Vec<async_nats::Client>,
    beats: tokio::task::JoinHandle<()>,
}

impl ConsoleMesh {
    pub async fn start() -> ConsoleMesh {
        build_gateway();
        let (up, running) = start_up(&[]).await;
        let nats = running["nats_url"].as_str().expect("url").to_string();
        let creds = running["operator_creds"]
            .as_str()
            .expect("creds")
            .to_string();
        let auth_dir = running["auth_dir"].as_str().expect("auth dir").to_string();
        let env = [
            ("MESH_NATS_URL", nats.as_str()),
            ("MESH_NATS_CREDS", creds.as_str()),
            ("MESH_AUTH_DIR", auth_dir.as_str()),
        ];
        let billing = agent(&nats, &env, "billing").await;
        let deployer = agent(&nats, &env, "deployer").await;
        let mut inbox = billing
            .queue_subscribe("mesh.agent.billing.inbox", "billing".into())
            .await
            .expect("subscribe");
        billing.flush().await.expect("flush");
        let js = async_nats::jetstream::new(deployer.clone());
        js.publish("mesh.intent.deployer.billing.invoice.create", "1".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        let msg = tokio::time::timeout(DEADLINE, inbox.next())
            .await
            .expect("delivered in time")
            .expect("a delivery");
        billing
            .publish(msg.reply.expect("a request"), "".into())
            .await
            .expect("ack");
        // Heartbeats, as agents send them, so that the table has instances and health.
        let beats = {
            let agents = [(billing.clone(), "billing"), (deployer.clone(), "deployer")];
            tokio::spawn(async move {
                loop {
                    for (client, id) in &agents {
                        let mut h = HeaderMap::new();
                        h.insert("Mesh-Instance", format!("{id}-1").as_str());
                        h.insert("Mesh-Cost-Total", "1.25");
                        let _ = client
                            .publish_with_headers(format!("mesh.hb.{id}"), h, "".into())
                            .await;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            })
        };

        let mut console = tokio::process::Command::new(BIN)
            .env_clear()
            .envs(env)
            .env("MESH_CONSOLE_TOKEN", format!("alice:{TOKEN}"))
            .env("MESH_FENCE_TIMEOUT", "10s")
            .args(["console", "--addr", "127.0.0.1:0", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn console");
        let mut out = console.stdout.take().expect("stdout");
        let started: Value = tokio::time::timeout(DEADLINE, async {
            use tokio::io::AsyncReadExt;
            let mut text = String::new();
            let mut buf = [0u8; 512];
            loop {
                let n = out.read(&mut buf).await.expect("read");
                assert!(n > 0, "console exited early: {text}");
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    return v;
                }
            }
        })
        .await
        .expect("the console printed where it listens");
        let url = started["url"].as_str().expect("url").to_string();
        ConsoleMesh {
            url,
            up: Some(up),
            console: Some(console),
            _agents: vec![billing, deployer],
            beats,
        }
    }

    /// Waits until the status table lists `ids`.
    pub async fn wait_for_agents(&self, ids: &[&str]) -> Value {
        let started = tokio::time::Instant::now();
        loop {
            let (status, body) = call("GET", &self.url, "/api/agents", Some(TOKEN), None).await;
            assert_eq!(status, 200, "{body}");
            if ids.iter().all(|id| find(&body, id).is_some()) {
                return body;
            }
            assert!(started.elapsed() < DEADLINE, "agents not listed: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the console (SIGINT: it must exit 0 with an event stream open) and the mesh.
    pub async fn stop(mut self) {
        self.beats.abort();
        let console = self.console.take().expect("console");
        assert_eq!(stop(console, "INT").await, Some(0), "console exit code");
        stop(self.up.take().expect("up"), "INT").await;
    }
}

pub fn find<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["agents"]
        .as_array()?
        .iter()
        .find(|a| a["agent"] == id)
}

fn refused(answer: &(u16, Value), status: u16, kind: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["kind"], kind, "{}", answer.1);
    assert!(
        answer.1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        answer.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reads_and_changes_the_mesh_and_refuses_what_it_must() {
    let mesh = ConsoleMesh::start().await;
    let url = mesh.url.clone();
    let url = url.as_str();

    // No token, a wrong token: refused, reads and writes alike.
    for (method, path) in [
        ("GET", "/api/agents"),
        ("GET", "/api/agents/billing"),
        ("GET", "/api/audit"),
        ("GET", "/api/events"),
        ("GET", "/api/policies/billing"),
        ("POST", "/api/agents/billing/kill"),
        ("POST", "/api/agents/billing/resume"),
        ("PUT", "/api/policies/billing"),
        ("DELETE", "/api/policies/billing"),
    ] {
        let body = (method != "GET").then_some(r#"{"reason":"x"}"#);
        refused(&call(method, url, path, None, body).await, 401, "no_token");
        refused(
            &call(method, url, path, Some(WRONG), body).await,
            401,
            "bad_token",
        );
    }

    // The status table.
    let status = mesh.wait_for_agents(&["billing", "deployer"]).await;
    assert_eq!(
        find(&status, "billing").expect("billing")["state"],
        "active"
    );
    assert!(
        status["gateways"].as_array().is_some_and(|g| g.len() == 1),
        "{status}"
    );

    // Bad and unknown ids.
    refused(
        &call("GET", url, "/api/agents/a.b", Some(TOKEN), None).await,
        400,
        "bad_agent",
    );
    refused(
        &call(
            "POST",
            url,
            "/api/agents/a%20b/kill",
            Some(TOKEN),
            Some(r#"{"reason":"r"}"#),
        )
        .await,
        400,
        "bad_agent",
    );
    refused(
        &call("GET", url, "/api/agents/nobody", Some(TOKEN), None).await,
        404,
        "unknown_agent",
    );

    // The live stream, open before the kill.
    let (code, mut events) = Sse::open(url, "/api/events?agent=billing", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let (first, subject) = events.next(DEADLINE).await;
    assert_eq!(
        (first.as_str(), subject.as_str()),
        ("ready", "mesh.audit.*.billing")
    );

    // A kill needs a reason, by name.
    let answer = call(
        "POST",
        url,
        "/api/agents/billing/kill",
        Some(TOKEN),
        Some("{}"),
    )
    .await;
    refused(&answer, 400, "bad_field");
    assert_eq!(answer.1["field"], "reason");
    let answer = call(
        "POST",
        url,
        "/api/agents/billing/kill",
        Some(TOKEN),
        Some(r#"{"reason":" "}"#),
    )
    .await;
    assert_eq!(answer.1["field"], "reason", "{}", answer.1);

    let (code, kill) = call(
        "POST",
        url,
        "/api/agents/billing/kill",
        Some(TOKEN),
        Some(r#"{"reason":"invoiced twice"}"#),
    )
    .await;
    assert_eq!(code, 200, "{kill}");
    assert_eq!(kill["complete"], true, "{kill}");
    let outcome = &kill["outcome"];
    assert_eq!(outcome["state"], "killed");
    assert_eq!(outcome["by"], "alice@console");
    assert_eq!(outcome["confirmed"], true);
    assert_eq!(
        outcome["replicas"]["confirmed"].as_array().map(Vec::len),
        Some(1),
        "{kill}"
    );
    assert!(outcome["replicas"]["fence_ms"].is_f64(), "{kill}");
    assert_eq!(outcome["pending"], 0, "{kill}");
    assert!(
        kill["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("killed billing: 1/1 replicas confirmed")),
        "{kill}"
    );

    // The kill reaches the stream, with the operator.
    let event = events
        .until("kill", DEADLINE, |e| e["agent"] == "billing")
        .await;
    assert_eq!(event["actor"], "alice@console", "{event}");
    assert_eq!(event["reason"], "invoiced twice");
    assert_eq!(event["replicas"], 1);

    // One agent: killed, with the kill among its events.
    let (code, detail) = call("GET", url, "/api/agents/billing", Some(TOKEN), None).await;
    assert_eq!(code, 200, "{detail}");
    assert_eq!(detail["agent"]["state"], "killed");
    assert_eq!(detail["agent"]["health"], "killed");
    assert!(
        detail["events"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["kind"] == "kill" && e["actor"] == "alice@console")),
        "{detail}"
    );

    // The audit trail with filters.
    let (code, audit) = call(
        "GET",
        url,
        "/api/audit?agent=billing&kind=kill&since=1h",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 200, "{audit}");
    let entries = audit.as_array().expect("a list");
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["reason"], "invoiced twice");
    let (_, none) = call(
        "GET",
        url,
        "/api/audit?agent=deployer&kind=kill",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(none, json!([]));
    let bad = call("GET", url, "/api/audit?since=soon", Some(TOKEN), None).await;
    refused(&bad, 400, "bad_field");
    assert_eq!(bad.1["field"], "since");
    let bad = call("GET", url, "/api/audit?kind=a.b", Some(TOKEN), None).await;
    assert_eq!(bad.1["field"], "kind", "{}", bad.1);
    refused(
        &call("GET", url, "/api/audit?agent=a.b", Some(TOKEN), None).await,
        400,
        "bad_agent",
    );
    refused(
        &call("GET", url, "/api/audit?limit=x", Some(TOKEN), None).await,
        400,
        "bad_request",
    );

    // Resume, with an empty body.
    let (code, resume) = call("POST", url, "/api/agents/billing/resume", Some(TOKEN), None).await;
    assert_eq!(code, 200, "{resume}");
    assert_eq!(resume["outcome"]["state"], "active");
    assert_eq!(resume["complete"], true, "{resume}");
    events
        .until("resume", DEADLINE, |e| e["actor"] == "alice@console")
        .await;
    let (_, detail) = call("GET", url, "/api/agents/billing", Some(TOKEN), None).await;
    assert_eq!(detail["agent"]["state"], "active", "{detail}");

    // Policies: bad fields are named; a good one is set, read back and removed.
    for (body, field) in [
        (r#"{"max_cost_usd": -5}"#, "max_cost_usd"),
        (r#"{"burst": "many"}"#, "burst"),
        (r#"{"rate": "fast"}"#, "rate"),
        (r#"{"on_breach": "explode"}"#, "on_breach"),
        (r#"{"max_intents_per_hour": 5, "colour": "red"}"#, "colour"),
    ] {
        let answer = call("PUT", url, "/api/policies/billing", Some(TOKEN), Some(body)).await;
        refused(&answer, 400, "bad_field");
        assert_eq!(answer.1["field"], field, "{body}: {}", answer.1);
    }
    refused(
        &call("PUT", url, "/api/policies/billing", Some(TOKEN), Some("{}")).await,
        400,
        "bad_request",
    );
    refused(
        &call(
            "PUT",
            url,
            "/api/policies/billing",
            Some(TOKEN),
            Some("[1]"),
        )
        .await,
        400,
        "bad_request",
    );
    refused(
        &call("GET", url, "/api/policies/a.b", Some(TOKEN), None).await,
        400,
        "bad_agent",
    );

    let (code, set) = call(
        "PUT",
        url,
        "/api/policies/billing",
        Some(TOKEN),
        Some(r#"{"max_intents_per_hour": 500, "on_breach": "block"}"#),
    )
    .await;
    assert_eq!(code, 200, "{set}");
    assert_eq!(set["complete"], true, "{set}");
    assert_eq!(set["change"]["by"], "alice@console");
    assert_eq!(set["change"]["to"]["max_intents_per_hour"], 500);
    events
        .until("policy", DEADLINE, |e| e["actor"] == "alice@console")
        .await;
    let (code, got) = call("GET", url, "/api/policies/billing", Some(TOKEN), None).await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(
        got["policy"]["record"]["policy"]["max_intents_per_hour"], 500,
        "{got}"
    );
    assert_eq!(got["effective"]["on_breach"], "block", "{got}");
    let (code, removed) = call("DELETE", url, "/api/policies/billing", Some(TOKEN), None).await;
    assert_eq!(code, 200, "{removed}");
    assert!(removed["change"]["to"].is_null(), "{removed}");
    let (_, got) = call("GET", url, "/api/policies/billing", Some(TOKEN), None).await;
    assert!(got["policy"]["record"].is_null(), "{got}");

    // The description and the page need no token.
    let (code, doc) = call("GET", url, "/openapi.json", None, None).await;
    assert_eq!(code, 200);
    assert!(
        doc["paths"]["/api/agents/{id}/kill"]["post"].is_object(),
        "{doc}"
    );
    let (code, page) = call_text("GET", url, "/", None, None).await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>Agent Mesh console</title>"), "{page}");
    refused(
        &call("GET", url, "/api/nothing", Some(TOKEN), None).await,
        404,
        "no_route",
    );

    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_does_not_start_without_a_token() {
    let o = crate::mesh_cli(&["console", "--addr", "127.0.0.1:0"], &[]).await;
    crate::assert_exit(&o, 2);
    assert!(
        crate::stderr(&o).contains("console_token is not set"),
        "{}",
        crate::stderr(&o)
    );
    let o = crate::mesh_cli(
        &["console", "--addr", "127.0.0.1:0"],
        &[("MESH_CONSOLE_TOKEN", "alice:short")],
    )
    .await;
    crate::assert_exit(&o, 2);
}
