//! kill and resume against a real server: the flag, the hold, the fence, the audit trail, and
//! what status and audit show afterwards.

use async_nats::jetstream;
use futures::StreamExt;
use mesh_schemas::{AgentId, AuditEvent, AuditKind, FenceAck, KillRecord, KillState};
use mesh_testkit::NatsServer;
use serde_json::Value;

use crate::{assert_exit, json, mesh_cli, stderr, stdout};

fn id(s: &str) -> AgentId {
    AgentId::new(s).expect("valid id")
}

/// The last audit event on `subject`, with its Nats-Msg-Id.
async fn last_audit(js: &jetstream::Context, subject: &str) -> (AuditEvent, String) {
    let stream = js.get_stream("MESH_AUDIT").await.expect("audit stream");
    let msg = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .expect("an audit event");
    let msg_id = msg
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    (mesh_schemas::decode(&msg.payload).expect("decodes"), msg_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_resume_with_no_gateway_write_the_flag_the_hold_and_the_audit() {
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client.clone());

    // First kill: creates the mesh's objects, holds an empty inbox.
    let o = mesh_cli(
        &[
            "kill",
            "deployer",
            "--reason",
            "deployed 47 of 3",
            "--nats-url",
            &url,
        ],
        &[("USER", "ops")],
    )
    .await;
    assert_exit(&o, 0);
    let text = stdout(&o);
    assert!(
        text.contains("killed deployer: 0 gateway replicas live; the flag and the hold are in NATS and every replica enforces them when it starts"),
        "{text}"
    );
    assert!(text.contains("0 inbound intents held"), "{text}");

    // Intents to the killed agent wait.
    for n in 0..3 {
        js.publish(
            format!("mesh.intent.alice.deployer.deploy.svc{n}"),
            "x".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }

    // Second kill, for scripts.
    let o = mesh_cli(
        &[
            "kill",
            "deployer",
            "--reason",
            "still rogue",
            "--by",
            "ops@test",
            "--json",
            "--nats-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_exit(&o, 0);
    let out = json(&o);
    assert_eq!(out["agent"], "deployer");
    assert_eq!(out["state"], "killed");
    assert_eq!(out["confirmed"], true);
    assert_eq!(out["pending"], 3);
    assert_eq!(out["replicas"]["live"], Value::Array(vec![]));
    let revision = out["revision"].as_u64().expect("revision");
    assert!(revision >= 2, "{out}");

    // The flag.
    let kv = js.get_key_value("mesh-kill").await.expect("kill bucket");
    let rec: KillRecord =
        mesh_schemas::decode(&kv.get("deployer").await.expect("get").expect("a record"))
            .expect("decodes");
    assert_eq!(rec.state, KillState::Killed);
    assert_eq!(rec.reason, "still rogue");
    assert_eq!(rec.by, "ops@test");

    // The hold: the intents wait in the stream. No gateway ran, so none parked them on a
    // consumer of their own yet (the gateway does, paused, when it meets them).
    let mut intents = js.get_stream("MESH_INTENTS").await.expect("intents stream");
    assert!(intents.consumer_info("in_deployer").await.is_err());
    assert_eq!(intents.info().await.expect("info").state.messages, 3);

    // The audit trail.
    let (event, msg_id) = last_audit(&js, "mesh.audit.kill.deployer").await;
    assert_eq!(event.kind, AuditKind::Kill);
    assert_eq!(event.agent, "deployer");
    assert_eq!(event.actor, "ops@test");
    assert_eq!(event.reason, "still rogue");
    assert_eq!(event.pending, Some(3));
    assert_eq!(event.replicas, Some(0));
    assert_eq!(msg_id, format!("kill-deployer-{revision}"));

    // Resume: the hold is released.
    let o = mesh_cli(
        &[
            "resume",
            "deployer",
            "--reason",
            "fixed",
            "--nats-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_exit(&o, 0);
    assert!(
        stdout(&o).starts_with("resumed deployer: 0 gateway replicas live"),
        "{}",
        stdout(&o)
    );
    let rec: KillRecord =
        mesh_schemas::decode(&kv.get("deployer").await.expect("get").expect("a record"))
            .expect("decodes");
    assert_eq!(rec.state, KillState::Active);
    let (event, _) = last_audit(&js, "mesh.audit.resume.deployer").await;
    assert_eq!(event.kind, AuditKind::Resume);
    assert_eq!(event.pending, Some(3));

    // Status and audit show it.
    let o = mesh_cli(&["status", "--json", "--nats-url", &url], &[]).await;
    assert_exit(&o, 0);
    let status = json(&o);
    let agents = status["agents"].as_array().expect("agents");
    let deployer = agents
        .iter()
        .find(|a| a["agent"] == "deployer")
        .expect("deployer listed");
    assert_eq!(deployer["state"], "active");
    assert_eq!(deployer["pending"], 3);
    assert_eq!(deployer["held"], false);
    let o = mesh_cli(&["status", "--nats-url", &url], &[]).await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("deployer"), "{}", stdout(&o));

    let o = mesh_cli(
        &["audit", "--agent", "deployer", "--json", "--nats-url", &url],
        &[],
    )
    .await;
    assert_exit(&o, 0);
    let kinds: Vec<String> = json(&o)
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, ["kill", "kill", "resume"]);
    let o = mesh_cli(
        &[
            "audit",
            "--kind",
            "kill",
            "--since",
            "1h",
            "--nats-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_exit(&o, 0);
    assert_eq!(
        stdout(&o).lines().count(),
        3,
        "header + 2 kills: {}",
        stdout(&o)
    );
}

/// A pretend gateway replica: announces itself in `mesh-gateways` and, when `acks` is true,
/// confirms every change of the kill flag of `agent` the way a real replica does.
async fn fake_replica(js: jetstream::Context, client: async_nats::Client, name: &str, acks: bool) {
    let gateways = js.get_key_value("mesh-gateways").await.expect("bucket");
    let now = mesh_schemas::now_unix_ms();
    let presence = format!(
        r#"{{"id":"{name}","version":"test","host":"test","pid":1,"started_unix_ms":{now},"at_unix_ms":{now},"interval_ms":60000}}"#
    );
    gateways.put(name, presence.into()).await.expect("presence");
    if !acks {
        return;
    }
    let kill = js.get_key_value("mesh-kill").await.expect("bucket");
    let mut watch = kill.watch("deployer").await.expect("watch");
    let name = name.to_string();
    tokio::spawn(async move {
        while let Some(Ok(entry)) = watch.next().await {
            let rec: KillRecord = match mesh_schemas::decode(&entry.value) {
                Ok(r) => r,
                Err(_) => continue,
            };
            let ack = FenceAck::new(name.clone(), id("deployer"), entry.revision, rec.state);
            let bytes = mesh_schemas::encode(&ack).expect("encodes");
            client
                .publish("mesh.gw.fenced.deployer", bytes.into())
                .await
                .expect("publish");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_waits_for_every_live_replica_and_exits_3_when_one_is_silent() {
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client.clone());
    // Let mesh-cli create the objects first.
    let o = mesh_cli(&["resume", "deployer", "--nats-url", &url], &[]).await;
    assert_exit(&o, 0);

    fake_replica(js.clone(), client.clone(), "gw-a", true).await;
    let o = mesh_cli(
        &[
            "kill",
            "deployer",
            "--reason",
            "r",
            "--json",
            "--nats-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_exit(&o, 0);
    let out = json(&o);
    assert_eq!(out["replicas"]["confirmed"], serde_json::json!(["gw-a"]));
    assert_eq!(out["confirmed"], true);
    let (event, _) = last_audit(&js, "mesh.audit.kill.deployer").await;
    assert_eq!(event.replicas, Some(1));
    assert!(event.fence_ms.is_some());

    fake_replica(js.clone(), client.clone(), "gw-silent", false).await;
    let o = mesh_cli(
        &[
            "kill",
            "deployer",
            "--reason",
            "r",
            "--timeout",
            "300ms",
            "--nats-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(err.contains("gw-silent"), "{err}");
    assert!(
        stdout(&o).contains("1/2 replicas confirmed"),
        "{}",
        stdout(&o)
    );
    // The flag is in force all the same.
    let kv = js.get_key_value("mesh-kill").await.expect("kill bucket");
    let rec: KillRecord =
        mesh_schemas::decode(&kv.get("deployer").await.expect("get").expect("a record"))
            .expect("decodes");
    assert_eq!(rec.state, KillState::Killed);
}
