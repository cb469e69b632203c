//! A rogue agent holding valid credentials of its own tries every way around the gateway. NATS
//! itself refuses each attempt, the victim receives nothing, and the kill still holds.

use std::time::Duration;

use async_nats::{jetstream, ConnectOptions, Event, HeaderMap};
use mesh_auth::{creds, jwt, permissions, push};
use mesh_schemas::KillState;
use mesh_tests::agents::{self, Recorder, Rejections};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::mesh::HUB_DOMAIN;
use mesh_tests::region;
use mesh_tests::{init_tracing, operator, Mesh, DEADLINE};
use tokio::sync::mpsc::UnboundedReceiver;

/// A secured mesh with one in-process gateway, an operator client, and the agent `victim`
/// recording everything delivered to it.
struct Scene {
    mesh: Mesh,
    _gw: GatewayTask,
    op: async_nats::Client,
    to_victim: Recorder,
    _victim: tokio::task::JoinHandle<()>,
}

async fn scene() -> Scene {
    init_tracing();
    let mesh = Mesh::start();
    let _gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let op = mesh.operator().await;
    wait_live(&op, &["gw1"]).await;
    let (to_victim, _victim) = agents::serve_at(&mesh, &mesh.url(), "victim", "v1").await;
    Scene {
        mesh,
        _gw,
        op,
        to_victim,
        _victim,
    }
}

/// The next error the server reports to a connection (a permissions violation, say).
async fn next_server_error(events: &mut UnboundedReceiver<Event>) -> String {
    loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(Event::ServerError(e))) => return e.to_string(),
            Ok(Some(_)) => continue,
            other => panic!("the server reported no error: {other:?}"),
        }
    }
}

/// The rogue's connection and the server errors it receives.
struct Rogue {
    client: async_nats::Client,
    events: UnboundedReceiver<Event>,
}

impl Rogue {
    /// The next permission violation the server reports to this connection.
    async fn violation(&mut self) -> String {
        next_server_error(&mut self.events).await
    }

    async fn publish_refused(&mut self, subject: &str) {
        self.client
            .publish(subject.to_string(), "rogue".into())
            .await
            .expect("the client sends it");
        let err = self.violation().await;
        let want = format!("Permissions Violation for Publish to \"{subject}\"");
        assert!(err.contains(&want), "publish to {subject}: got {err:?}");
    }

    async fn subscribe_refused(&mut self, subject: &str, queue: Option<&str>) {
        let _sub = match queue {
            Some(q) => {
                self.client
                    .queue_subscribe(subject.to_string(), q.into())
                    .await
            }
            None => self.client.subscribe(subject.to_string()).await,
        }
        .expect("the client sends it");
        let err = self.violation().await;
        let want = format!("Permissions Violation for Subscription to \"{subject}\"");
        assert!(err.contains(&want), "subscribe to {subject}: got {err:?}");
    }
}

/// The kill of `rogue` (reason "went rogue") holds: its own intent is stored and rejected, and
/// the victim has received nothing.
async fn own_intent_rejected(
    rogue: &async_nats::Client,
    rejected: &Rejections,
    to_victim: &Recorder,
) {
    let rogue_js = jetstream::new(rogue.clone());
    agents::send(&rogue_js, "rogue", "victim", "deploy.service", "0")
        .await
        .expect("its own intents are still stored");
    rejected.wait_for(1).await;
    let (status, reason, _) = rejected.all()[0].clone();
    assert_eq!(status, 403);
    assert!(reason.contains("went rogue"), "{reason}");
    assert!(
        to_victim.is_empty(),
        "the victim received {:?}",
        to_victim.all()
    );
}

#[tokio::test]
async fn nats_refuses_every_way_around_the_gateway_and_the_kill_holds() {
    let Scene {
        mesh,
        _gw,
        op,
        to_victim,
        _victim,
    } = scene().await;
    let (client, events) = mesh.agent_watched("rogue").await;
    let mut rogue = Rogue { client, events };
    let rejected = agents::rejections(&rogue.client, "rogue").await;
    operator::kill(&op, "rogue", "went rogue").await;

    // Another agent's subjects, sending as someone else, the gateway's markers.
    for subject in [
        "mesh.agent.victim.inbox",
        "mesh.agent.victim.rejected",
        "mesh.agent.victim.control",
        "mesh.hb.victim",
        "mesh.intent.victim.victim.deploy.service",
        "mesh.intent._mesh._unpark.victim",
        "mesh.gw.fenced.rogue",
        "mesh.gw.parked.victim",
        "mesh.audit.resume.rogue",
        "mesh.event.healthy.rogue",
    ] {
        rogue.publish_refused(subject).await;
    }
    // Every bucket, directly and through the JetStream API; the streams and consumers; acks
    // of the gateway's deliveries; other identities' inboxes; the system account.
    for subject in [
        "$KV.mesh-kill.rogue",
        "$KV.mesh-policy.rogue",
        "$KV.mesh-policy._default",
        "$KV.mesh-counters.rogue.h",
        "$KV.mesh-health.rogue",
        "$KV.mesh-gateways.gw1",
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.MESH_INTENTS",
        "$JS.API.STREAM.PURGE.MESH_INTENTS",
        "$JS.API.STREAM.DELETE.MESH_INTENTS",
        "$JS.API.STREAM.PURGE.KV_mesh-kill",
        "$JS.API.STREAM.MSG.DELETE.KV_mesh-kill",
        "$JS.API.STREAM.MSG.GET.MESH_AUDIT",
        "$JS.API.DIRECT.GET.KV_mesh-kill",
        "$JS.API.DIRECT.GET.KV_mesh-kill.$KV.mesh-kill.rogue",
        "$JS.API.CONSUMER.CREATE.MESH_AUDIT",
        "$JS.API.CONSUMER.INFO.MESH_INTENTS.mesh_deliver",
        "$JS.API.CONSUMER.DELETE.MESH_INTENTS.mesh_deliver",
        "$JS.API.CONSUMER.PAUSE.MESH_INTENTS.mesh_deliver",
        "$JS.API.CONSUMER.MSG.NEXT.MESH_INTENTS.mesh_deliver",
        "$JS.ACK.MESH_INTENTS.mesh_deliver.1.1.1.1.0",
        "_GW_INBOX.reply",
        "_CLI_INBOX.reply",
        "_INBOX_victim.reply",
        "_INBOX.reply",
        "$SYS.REQ.CLAIMS.UPDATE",
    ] {
        rogue.publish_refused(subject).await;
    }
    for (subject, queue) in [
        ("mesh.agent.victim.inbox", Some("victim")),
        ("mesh.agent.victim.inbox", None),
        ("mesh.agent.victim.>", None),
        ("mesh.agent.*.inbox", None),
        ("mesh.intent.>", None),
        ("mesh.hb.*", None),
        ("mesh.gw.>", None),
        ("mesh.audit.>", None),
        ("mesh.event.>", None),
        ("_INBOX.>", None),
        ("_GW_INBOX.>", None),
        ("_CLI_INBOX.>", None),
        ("_INBOX_victim.>", None),
        ("$JS.ACK.>", None),
        ("$KV.>", None),
        ("$SYS.>", None),
        (">", None),
    ] {
        rogue.subscribe_refused(subject, queue).await;
    }

    // The JetStream API as a rogue would call it: refused, and nothing changed.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(300))
        .build(rogue.client.clone());
    assert!(js.delete_stream("MESH_INTENTS").await.is_err());
    assert!(js.get_key_value("mesh-kill").await.is_err());
    let ops = jetstream::new(op.clone());
    ops.get_stream("MESH_INTENTS")
        .await
        .expect("the stream is still there");

    // The kill holds: the flag is unchanged, and the rogue's own intent is rejected.
    let record = operator::kill_record(&op, "rogue")
        .await
        .expect("kill flag");
    assert_eq!(record.state, KillState::Killed);
    own_intent_rejected(&rogue.client, &rejected, &to_victim).await;
}

/// Region B (issue 10): a rogue connected to the leaf node with its own credentials tries the
/// hub's JetStream domain, the one path to the hub's streams and buckets that crosses a leaf
/// link, and the other agents' subjects. The leaf enforces the agent's own permissions: every
/// attempt is a permission violation there, and the kill flag keeps its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_in_another_region_is_refused_the_hubs_jetstream_domain() {
    let (mesh, region, _gw, op) = region::two_regions().await;
    let b = region.url();
    let (to_victim, _victim) = agents::serve_at(&mesh, &b, "victim", "v-b").await;
    let (client, events) = mesh.agent_watched_at(&b, "rogue").await;
    let mut rogue = Rogue { client, events };
    let rejected = agents::rejections(&rogue.client, "rogue").await;
    let killed = operator::kill(&op, "rogue", "went rogue").await;

    let d = HUB_DOMAIN;
    for subject in [
        // The JetStream API through the hub's domain: account and stream info, consumers on
        // the intents (both create forms), its own kill flag read, written, purged, deleted.
        format!("$JS.{d}.API.INFO"),
        format!("$JS.{d}.API.STREAM.INFO.MESH_INTENTS"),
        format!("$JS.{d}.API.STREAM.LIST"),
        format!("$JS.{d}.API.CONSUMER.CREATE.MESH_INTENTS"),
        format!("$JS.{d}.API.CONSUMER.CREATE.MESH_INTENTS.rogue.mesh.intent.>"),
        format!("$JS.{d}.API.CONSUMER.DURABLE.CREATE.MESH_INTENTS.rogue"),
        format!("$JS.{d}.API.CONSUMER.MSG.NEXT.MESH_INTENTS.mesh_deliver"),
        format!("$JS.{d}.API.STREAM.INFO.KV_mesh-kill"),
        format!("$JS.{d}.API.STREAM.MSG.GET.KV_mesh-kill"),
        format!("$JS.{d}.API.DIRECT.GET.KV_mesh-kill"),
        format!("$JS.{d}.API.DIRECT.GET.KV_mesh-kill.$KV.mesh-kill.rogue"),
        format!("$JS.{d}.API.$KV.mesh-kill.rogue"),
        format!("$JS.{d}.API.STREAM.PURGE.KV_mesh-kill"),
        format!("$JS.{d}.API.STREAM.MSG.DELETE.KV_mesh-kill"),
        // Any other domain, and no domain at all.
        "$JS.region-b.API.INFO".to_string(),
        "$JS.API.STREAM.INFO.MESH_INTENTS".to_string(),
        // The bucket directly, another agent's inbox and replies, sending as another agent.
        "$KV.mesh-kill.rogue".to_string(),
        "$KV.mesh-policy.rogue".to_string(),
        "mesh.agent.victim.inbox".to_string(),
        "_INBOX_victim.reply".to_string(),
        "mesh.intent.victim.victim.deploy.service".to_string(),
        "mesh.intent.planner.rogue.resume".to_string(),
    ] {
        rogue.publish_refused(&subject).await;
    }
    // The same through async-nats' JetStream API in the hub's domain, as a rogue would call
    // it: each request is refused by the leaf and times out unanswered.
    let js = jetstream::ContextBuilder::new()
        .domain(d)
        .timeout(Duration::from_millis(300))
        .build(rogue.client.clone());
    assert!(js.get_stream("MESH_INTENTS").await.is_err());
    assert!(
        rogue.violation().await.contains(&format!(
            "Permissions Violation for Publish to \"$JS.{d}.API.STREAM.INFO.MESH_INTENTS\""
        )),
        "stream info through the domain"
    );
    assert!(js.get_key_value("mesh-kill").await.is_err());
    assert!(
        rogue.violation().await.contains(&format!(
            "Permissions Violation for Publish to \"$JS.{d}.API.STREAM.INFO.KV_mesh-kill\""
        )),
        "the kill bucket through the domain"
    );

    // The kill holds: the flag is the one the operator wrote, and the rogue's own intent from
    // region B is rejected; the victim received nothing.
    let flag = jetstream::new(op.clone())
        .get_key_value("mesh-kill")
        .await
        .expect("kill bucket")
        .entry("rogue")
        .await
        .expect("read the kill flag")
        .expect("kill flag");
    assert_eq!(
        flag.revision, killed.revision,
        "the kill flag was rewritten"
    );
    let record = operator::kill_record(&op, "rogue")
        .await
        .expect("kill flag");
    assert_eq!(record.state, KillState::Killed);
    own_intent_rejected(&rogue.client, &rejected, &to_victim).await;
}

#[tokio::test]
async fn headers_an_agent_sets_never_change_who_sent_it() {
    let Scene {
        mesh,
        _gw,
        op: _,
        to_victim,
        _victim,
    } = scene().await;

    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", "m-1");
    h.insert("Mesh-From", "boss");
    h.insert("Mesh-Intent-Id", "forged");
    h.insert("Mesh-Status", "200");
    h.insert("Mesh-Action", "pay.everyone");
    let js = jetstream::new(mesh.agent("mallory").await);
    agents::send_with(&js, "mesh.intent.mallory.victim.deploy.service", h, "x")
        .await
        .expect("stored");
    to_victim.wait_for(1).await;
    let got = &to_victim.all()[0];
    assert_eq!(got.from, "mallory");
    assert_eq!(got.action, "deploy.service");
    assert_eq!(got.intent_id, "m-1");
}

#[tokio::test]
async fn forged_credentials_are_refused_at_connect() {
    let mesh = Mesh::start();
    let own = mesh.agent_creds("rogue").expect("creds");
    let (token, seed) = creds::parse(&own).expect("parse");
    let user = nkeys::KeyPair::from_seed(&seed).expect("seed");
    let claims = jwt::decode(&token).expect("decode");

    // Its own JWT, renamed to another agent: the signature no longer matches.
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut renamed = serde_json::to_value(&claims).expect("json");
    renamed["name"] = "victim".into();
    let body = data_encoding::BASE64URL_NOPAD.encode(&serde_json::to_vec(&renamed).expect("json"));
    parts[1] = &body;
    let tampered = parts.join(".");
    // A JWT of its own making with the gateway's permissions, signed with the only key it has.
    let mut forged = serde_json::Map::new();
    forged.insert("iat".into(), claims.iat.into());
    forged.insert("iss".into(), user.public_key().into());
    forged.insert("sub".into(), user.public_key().into());
    forged.insert("name".into(), "mesh-gateway".into());
    let mut nats = permissions::gateway("mesh").to_json();
    nats["type"] = "user".into();
    nats["version"] = 2.into();
    nats["issuer_account"] = mesh.auth().info().mesh_account.clone().into();
    forged.insert("nats".into(), nats);
    let self_signed = jwt::sign(forged, &user).expect("sign");

    for bad in [tampered, self_signed] {
        let text = creds::format(&bad, &seed);
        let res = ConnectOptions::with_credentials(&text)
            .expect("creds parse")
            .max_reconnects(Some(1))
            .connect(mesh.url())
            .await;
        let err = res.expect_err("the server refuses forged credentials");
        assert_eq!(
            err.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_revoked_agent_is_cut_off_and_its_inbound_work_kept() {
    init_tracing();
    let mesh = Mesh::start();
    let _gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let op = mesh.operator().await;
    wait_live(&op, &["gw1"]).await;
    let (worker, mut events) = mesh.agent_watched("worker").await;
    let seen = Recorder::default();
    let serving = agents::serve(&worker, "worker", "w1", seen.clone(), true).await;
    let planner = jetstream::new(mesh.agent("planner").await);
    agents::send(&planner, "planner", "worker", "do", "0")
        .await
        .expect("sent");
    seen.wait_for(1).await;

    let (revoked, account) = mesh.auth().revoke_agent("worker").expect("revoke");
    assert_eq!(revoked.len(), 1);
    let sys = ConnectOptions::with_credentials(
        &std::fs::read_to_string(mesh.auth().system_creds()).expect("creds"),
    )
    .expect("parse")
    .custom_inbox_prefix(permissions::OPERATOR_INBOX)
    .connect(mesh.url())
    .await
    .expect("system user");
    push::push_account(&sys, &account, Duration::from_secs(5))
        .await
        .expect("pushed");
    loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(Event::Disconnected)) => break,
            Ok(Some(_)) => continue,
            other => panic!("the revoked agent stayed connected: {other:?}"),
        }
    }
    serving.abort();
    let again = ConnectOptions::with_credentials(&mesh.agent_creds("worker").expect("creds"))
        .expect("parse")
        .connect(mesh.url())
        .await;
    assert_eq!(
        again.expect_err("refused").kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
    );

    // Work sent while it is cut off waits, and arrives in order with new credentials.
    for n in 1..=5 {
        agents::send(&planner, "planner", "worker", "do", n.to_string())
            .await
            .expect("sent");
    }
    let fresh = mesh.auth().add_agent("worker", None).expect("re-issue");
    let client = ConnectOptions::with_credentials(&fresh.creds)
        .expect("parse")
        .custom_inbox_prefix(permissions::agent_inbox("worker"))
        .connect(mesh.url())
        .await
        .expect("new credentials connect");
    let _w = agents::serve(&client, "worker", "w2", seen.clone(), true).await;
    seen.wait_unique("planner", 6).await;
    seen.assert_in_order("planner", 6);
}

/// The same attempts from nats-py, as an agent written in Python would make them: refused by
/// NATS, the victim receives nothing, the kill holds, and the credentials `agent add` issues
/// work as they are with a Python client.
#[tokio::test]
async fn a_nats_py_rogue_is_refused_the_same_way() {
    let Scene {
        mesh,
        _gw,
        op,
        to_victim,
        _victim,
    } = scene().await;
    let mut rejected = op
        .subscribe("mesh.agent.rogue.rejected")
        .await
        .expect("sub");
    mesh_tests::registered(&op).await;
    operator::kill(&op, "rogue", "went rogue").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("rogue.creds");
    std::fs::write(&creds, mesh.agent_creds("rogue").expect("creds")).expect("write creds");
    let publish = [
        "mesh.agent.victim.inbox",
        "mesh.hb.victim",
        "mesh.intent.victim.victim.deploy.service",
        "mesh.intent._mesh._unpark.victim",
        "$KV.mesh-kill.rogue",
        "$JS.API.STREAM.PURGE.MESH_INTENTS",
        "$JS.API.CONSUMER.PAUSE.MESH_INTENTS.mesh_deliver",
        "$JS.API.DIRECT.GET.KV_mesh-kill",
        "mesh.gw.fenced.rogue",
        "mesh.audit.resume.rogue",
        "_GW_INBOX.reply",
        "$SYS.REQ.CLAIMS.UPDATE",
    ];
    let subscribe = [
        "mesh.agent.victim.inbox",
        "mesh.intent.>",
        "_INBOX.>",
        "_GW_INBOX.>",
        "_CLI_INBOX.>",
        "$KV.>",
        ">",
    ];
    let spec = serde_json::json!({
        "url": mesh.url(),
        "creds": creds,
        "agent": "rogue",
        "victim": "victim",
        "publish": publish,
        "subscribe": subscribe,
    });
    let report = python_rogue(&spec).await;

    let refused = report["refused"].as_array().expect("refused");
    assert_eq!(
        report["not_refused"],
        serde_json::json!([]),
        "NATS let these through: {report}"
    );
    assert_eq!(refused.len(), publish.len() + subscribe.len(), "{report}");
    for call in report["js_errors"].as_array().expect("js_errors") {
        assert!(
            !call["error"].is_null(),
            "a JetStream API call worked: {call}"
        );
    }
    assert!(
        report["own_intent_seq"].as_u64().is_some_and(|s| s > 0),
        "{report}"
    );

    // Its own intent (with a spoofed Mesh-From) is rejected as its own; the victim got nothing.
    let notice = tokio::time::timeout(DEADLINE, futures::StreamExt::next(&mut rejected))
        .await
        .expect("a rejection notice in time")
        .expect("notice");
    let status = notice
        .headers
        .as_ref()
        .and_then(|h| h.get("Mesh-Status"))
        .map(|v| v.to_string());
    assert_eq!(status.as_deref(), Some("403"));
    let record = operator::kill_record(&op, "rogue")
        .await
        .expect("kill flag");
    assert_eq!(record.state, KillState::Killed);
    assert!(
        to_victim.is_empty(),
        "the victim received {:?}",
        to_victim.all()
    );
}

/// Runs tests/python/rogue.py in the project's venv (scripts/python-env creates it).
async fn python_rogue(spec: &serde_json::Value) -> serde_json::Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf();
    let env = std::process::Command::new(root.join("scripts/python-env"))
        .output()
        .expect("run scripts/python-env");
    assert!(
        env.status.success(),
        "scripts/python-env failed: {}",
        String::from_utf8_lossy(&env.stderr)
    );
    let python = String::from_utf8(env.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let out = tokio::process::Command::new(python)
        .arg(root.join("tests/python/rogue.py"))
        .arg(spec.to_string())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("rogue.py finished in time")
        .expect("run rogue.py");
    assert!(
        out.status.success(),
        "rogue.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rogue.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The one reply an agent may send to each delivery is used up when two of its own
/// subscriptions receive the request (a trap of NATS response permissions): an agent that also
/// holds `mesh.agent.<id>.>` cannot acknowledge. `mesh-agent` subscribes to `inbox`, `rejected`
/// and `control` separately, and its acknowledgements go through.
#[tokio::test]
async fn overlapping_subscriptions_use_up_the_reply_and_mesh_agent_avoids_them() {
    init_tracing();
    let mesh = Mesh::start();
    let _gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let op = mesh.operator().await;
    wait_live(&op, &["gw1"]).await;
    let planner = jetstream::new(mesh.agent("planner").await);

    // The trap: a queue subscription on the inbox and a wildcard over the same subjects.
    let (naive, mut events) = mesh.agent_watched("naive").await;
    let mut inbox = naive
        .queue_subscribe("mesh.agent.naive.inbox", "naive".into())
        .await
        .expect("sub");
    let _all = naive.subscribe("mesh.agent.naive.>").await.expect("sub");
    mesh_tests::registered(&naive).await;
    agents::send(&planner, "planner", "naive", "do", "0")
        .await
        .expect("sent");
    let msg = tokio::time::timeout(DEADLINE, futures::StreamExt::next(&mut inbox))
        .await
        .expect("delivered in time")
        .expect("delivery");
    let reply = msg.reply.expect("a request");
    naive.publish(reply.clone(), "".into()).await.expect("sent");
    let refusal = next_server_error(&mut events).await;
    assert!(
        refusal.contains(&format!("Permissions Violation for Publish to \"{reply}\"")),
        "{refusal}"
    );

    // mesh-agent: inbox, rejections and control at once, and every delivery acknowledged.
    let agent = mesh_agent::Agent::new(
        mesh.agent("careful").await,
        mesh_schemas::AgentId::new("careful").expect("id"),
    );
    let _rejections = agent.rejections().await.expect("rejections");
    let _control = agent.control().await.expect("control");
    let mut served = agent.serve().await.expect("serve");
    for n in 0..3 {
        agents::send(&planner, "planner", "careful", "do", n.to_string())
            .await
            .expect("sent");
    }
    for _ in 0..3 {
        let d = tokio::time::timeout(DEADLINE, served.next())
            .await
            .expect("delivered in time")
            .expect("delivery");
        assert_eq!(d.attempt, 1, "a redelivery: an acknowledgement was lost");
        d.ack().await.expect("acknowledged");
    }
    // Acknowledged means the gateway acked the intents in JetStream: nothing stays pending on
    // the shared consumer (the naive agent's intent, never acknowledged, is parked on its own).
    let js = jetstream::new(op.clone());
    mesh_tests::eventually("the careful agent's intents acknowledged", || {
        let js = js.clone();
        async move {
            let Ok(mut stream) = js.get_stream("MESH_INTENTS").await else {
                return false;
            };
            let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>("mesh_deliver")
                .await
            else {
                return false;
            };
            let Ok(info) = consumer.info().await else {
                return false;
            };
            let last = stream
                .info()
                .await
                .map(|i| i.state.last_sequence)
                .unwrap_or(0);
            info.delivered.stream_sequence == last && info.num_ack_pending == 0
        }
    })
    .await;
}
