//! Policies, counters and health as mesh-cli shows and changes them: `policy set|get|rm` (with a
//! real gateway replica confirming), the audit trail of a change, `resume` resetting the policy
//! counters, and `status` reading health records and counters.

use std::time::Duration;

use async_nats::jetstream;
use mesh_gateway::policy::budget::Windows;
use mesh_schemas::{
    AgentId, AuditEvent, AuditKind, HealthRecord, HealthState, OnBreach, Policy, PolicyRecord,
};
use mesh_testkit::NatsServer;
use serde_json::{json as j, Value};

use crate::{assert_exit, json, mesh_cli, stderr, stdout};

fn id(s: &str) -> AgentId {
    AgentId::new(s).expect("valid id")
}

/// The last audit event on `subject`.
async fn last_audit(js: &jetstream::Context, subject: &str) -> AuditEvent {
    let stream = js.get_stream("MESH_AUDIT").await.expect("audit stream");
    let msg = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .expect("an audit event");
    mesh_schemas::decode(&msg.payload).expect("decodes")
}

/// The `{"from": …, "to": …}` of a policy event.
fn from_to(event: &AuditEvent) -> (Value, Value) {
    let detail: Value =
        serde_json::from_str(event.detail.as_deref().expect("a detail")).expect("JSON detail");
    (detail["from"].clone(), detail["to"].clone())
}

/// A gateway replica in this process, stopped when the returned sender is dropped.
async fn gateway(url: &str, name: &str) -> tokio::sync::oneshot::Sender<()> {
    let client = async_nats::connect(url).await.expect("connect");
    let cfg = mesh_gateway::GatewayConfig {
        nats_url: url.to_string(),
        gateway_id: Some(name.to_string()),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = mesh_gateway::run(client, cfg, async {
            let _ = stopped.await;
        })
        .await;
    });
    // Wait until it has announced itself.
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(kv) = js.get_key_value("mesh-gateways").await {
            if kv.get(name).await.ok().flatten().is_some() {
                return stop;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway {name} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_bad_policy_value_exits_2_naming_the_field_without_a_server() {
    let unreachable = "nats://127.0.0.1:1";
    for (args, field) in [
        (vec!["--rate", "ten"], "rate"),
        (vec!["--rate", "10/d"], "rate"),
        (vec!["--burst", "5"], "burst"),
        (vec!["--max-intents-per-hour", "0"], "max_intents_per_hour"),
        (vec!["--max-intents-per-day", "0"], "max_intents_per_day"),
        (vec!["--max-cost-usd", "-5"], "max_cost_usd"),
        (vec!["--max-cost-usd-per-day", "0"], "max_cost_usd_per_day"),
        (vec!["--allow-send", "deploy.>.x"], "allow_send"),
        (vec!["--deny-receive", "a b"], "deny_receive"),
        (vec!["--degraded-after", "soon"], "degraded_after"),
        (
            vec!["--degraded-after", "30s", "--unreachable-after", "10s"],
            "unreachable_after",
        ),
    ] {
        let mut argv = vec!["policy", "set", "deployer", "--nats-url", unreachable];
        argv.extend(&args);
        let o = mesh_cli(&argv, &[]).await;
        assert_exit(&o, 2);
        let err = stderr(&o);
        assert!(err.contains(&format!("`{field}`")), "{args:?}: {err}");
        assert!(
            err.contains(&format!("--{}", field.replace('_', "-"))),
            "names the flag: {err}"
        );
        assert!(err.contains("nothing was written"), "{err}");
    }
    // Values clap refuses name the flag too.
    for (args, flag) in [
        (vec!["--on-breach", "explode"], "--on-breach"),
        (vec!["--on-unreachable", "panic"], "--on-unreachable"),
        (
            vec!["--max-intents-per-hour", "many"],
            "--max-intents-per-hour",
        ),
        (vec!["--max-cost-usd", "fifty"], "--max-cost-usd"),
        (vec!["--merge", "--unset", "rates"], "--unset"),
    ] {
        let mut argv = vec!["policy", "set", "deployer", "--nats-url", unreachable];
        argv.extend(&args);
        let o = mesh_cli(&argv, &[]).await;
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(flag), "{args:?}: {}", stderr(&o));
    }
    // No field at all, both targets, or none.
    let o = mesh_cli(&["policy", "set", "deployer"], &[]).await;
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("policy rm"), "{}", stderr(&o));
    let o = mesh_cli(&["policy", "get", "deployer", "--default"], &[]).await;
    assert_exit(&o, 2);
    let o = mesh_cli(&["policy", "get"], &[]).await;
    assert_exit(&o, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_get_and_rm_round_trip_through_kv_the_replicas_and_the_audit_trail() {
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let _gw = gateway(&url, "gw-1").await;
    let cli = |args: &[&str]| {
        let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        argv.extend(["--nats-url".to_string(), url.clone()]);
        async move {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            mesh_cli(&argv, &[("USER", "ops")]).await
        }
    };

    // The default, then the agent's own policy.
    let o = cli(&[
        "policy",
        "set",
        "--default",
        "--max-intents-per-day",
        "5000",
        "--on-breach",
        "block",
    ])
    .await;
    assert_exit(&o, 0);
    assert!(
        stdout(&o).starts_with("policy of _default set: 1/1 replicas applied it"),
        "{}",
        stdout(&o)
    );
    let o = cli(&[
        "policy",
        "set",
        "deployer",
        "--max-intents-per-hour",
        "500",
        "--max-cost-usd",
        "$50",
        "--rate",
        "10/s",
        "--burst",
        "20",
        "--allow-send",
        "deploy.*",
        "--allow-send",
        "read.>",
        "--by",
        "alice@ops",
        "--reason",
        "ticket 42",
        "--json",
    ])
    .await;
    assert_exit(&o, 0);
    let out = json(&o);
    assert_eq!(out["key"], "deployer");
    assert_eq!(out["from"], Value::Null);
    assert_eq!(out["confirmed"], true);
    assert_eq!(out["replicas"]["confirmed"], j!(["gw-1"]));
    let revision = out["revision"].as_u64().expect("revision");

    // What KV holds: a PolicyRecord in MessagePack, with exactly the fields given.
    let kv = js.get_key_value("mesh-policy").await.expect("bucket");
    let raw = kv.get("deployer").await.expect("get").expect("a value");
    assert_ne!(raw.first(), Some(&b'{'), "MessagePack, not JSON");
    let rec: PolicyRecord = mesh_schemas::decode(&raw).expect("decodes");
    let want = Policy {
        rate: Some("10/s".into()),
        burst: Some(20),
        max_intents_per_hour: Some(500),
        max_cost_usd: Some(50.0),
        allow_send: Some(vec!["deploy.*".into(), "read.>".into()]),
        ..Policy::default()
    };
    assert_eq!(rec.policy, want);
    assert_eq!(rec.by, "alice@ops");

    // The audit event: who, why, from → to.
    let event = last_audit(&js, "mesh.audit.policy.deployer").await;
    assert_eq!(event.kind, AuditKind::Policy);
    assert_eq!(event.actor, "alice@ops");
    assert_eq!(event.reason, "policy set: ticket 42");
    assert_eq!(event.replicas, Some(1));
    let (from, to) = from_to(&event);
    assert_eq!(from, Value::Null);
    assert_eq!(to, serde_json::to_value(&want).expect("json"));

    // get: the agent's own, the default, and the merge of the two.
    let o = cli(&["policy", "get", "deployer", "--json"]).await;
    assert_exit(&o, 0);
    let got = json(&o);
    assert_eq!(
        got["policy"]["record"]["policy"]["max_intents_per_hour"],
        500
    );
    assert_eq!(got["policy"]["revision"], revision);
    assert_eq!(
        got["default"]["record"]["policy"]["max_intents_per_day"],
        5000
    );
    assert_eq!(got["effective"]["max_intents_per_hour"], 500);
    assert_eq!(got["effective"]["max_intents_per_day"], 5000);
    assert_eq!(got["effective"]["on_breach"], "block");
    assert_eq!(got["built_in"]["degraded_after"], "30s");
    let o = cli(&["policy", "get", "deployer"]).await;
    assert_exit(&o, 0);
    let text = stdout(&o);
    assert!(text.contains("set by alice@ops"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("max_intents_per_day"))
        .expect("a row per field");
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["max_intents_per_day", "-", "5000", "5000"]
    );
    let o = cli(&["policy", "get", "--default", "--json"]).await;
    assert_exit(&o, 0);
    assert_eq!(json(&o)["effective"]["on_breach"], "block");

    // set replaces the whole policy; --merge keeps what is not given.
    let o = cli(&["policy", "set", "deployer", "--on-breach", "observe"]).await;
    assert_exit(&o, 0);
    let event = last_audit(&js, "mesh.audit.policy.deployer").await;
    let (from, to) = from_to(&event);
    assert_eq!(from, serde_json::to_value(&want).expect("json"));
    assert_eq!(to, j!({"on_breach": "observe"}));
    let o = cli(&[
        "policy",
        "set",
        "deployer",
        "--merge",
        "--max-intents-per-hour",
        "40",
    ])
    .await;
    assert_exit(&o, 0);
    let rec: PolicyRecord =
        mesh_schemas::decode(&kv.get("deployer").await.expect("get").expect("value"))
            .expect("decodes");
    assert_eq!(rec.policy.on_breach, Some(OnBreach::Observe));
    assert_eq!(rec.policy.max_intents_per_hour, Some(40));
    let o = cli(&[
        "policy",
        "set",
        "deployer",
        "--merge",
        "--unset",
        "on-breach",
    ])
    .await;
    assert_exit(&o, 0);
    let (_, to) = from_to(&last_audit(&js, "mesh.audit.policy.deployer").await);
    assert_eq!(to, j!({"max_intents_per_hour": 40}));
    // A merge that would be invalid is refused, naming the field, and writes nothing.
    let before = kv.entry("deployer").await.expect("entry").expect("some");
    let o = cli(&["policy", "set", "deployer", "--merge", "--burst", "5"]).await;
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("`burst`"), "{}", stderr(&o));
    let after = kv.entry("deployer").await.expect("entry").expect("some");
    assert_eq!(before.revision, after.revision);

    // rm: from → null; a second rm has nothing to do and records nothing.
    let o = cli(&["policy", "rm", "deployer", "--json"]).await;
    assert_exit(&o, 0);
    assert_eq!(json(&o)["to"], Value::Null);
    assert_eq!(json(&o)["confirmed"], true);
    assert!(kv.get("deployer").await.expect("get").is_none());
    let event = last_audit(&js, "mesh.audit.policy.deployer").await;
    assert_eq!(event.reason, "policy removed");
    assert_eq!(
        event.actor,
        "ops@".to_string() + &mesh_gateway::config::hostname()
    );
    let (from, to) = from_to(&event);
    assert_eq!(from, j!({"max_intents_per_hour": 40}));
    assert_eq!(to, Value::Null);
    let o = cli(&["policy", "rm", "deployer"]).await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("nothing to remove"), "{}", stdout(&o));
    let o = cli(&["audit", "--kind", "policy", "--json"]).await;
    assert_eq!(json(&o).as_array().expect("array").len(), 6);

    // After rm, get shows no own policy and the default as the effective one.
    let o = cli(&["policy", "get", "deployer", "--json"]).await;
    assert_exit(&o, 0);
    let got = json(&o);
    assert_eq!(got["policy"]["record"], Value::Null);
    assert_eq!(
        got["effective"],
        j!({"max_intents_per_day": 5000, "on_breach": "block"})
    );

    // A value written behind mesh-cli's back is shown as unreadable, and set replaces it.
    kv.put("deployer", "{\"policy\":{\"rate\":\"fast\"}}".into())
        .await
        .expect("put");
    let o = cli(&["policy", "get", "deployer"]).await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("UNREADABLE"), "{}", stdout(&o));
    let o = cli(&["policy", "set", "deployer", "--merge", "--burst", "1"]).await;
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("without --merge"), "{}", stderr(&o));
    let o = cli(&["policy", "set", "deployer", "--rate", "1/s"]).await;
    assert_exit(&o, 0);
    let detail: Value = serde_json::from_str(
        last_audit(&js, "mesh.audit.policy.deployer")
            .await
            .detail
            .as_deref()
            .expect("detail"),
    )
    .expect("json");
    assert_eq!(detail["from"], Value::Null);
    assert!(detail["from_unreadable"]
        .as_str()
        .is_some_and(|s| s.contains("rate")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_exits_3_when_a_live_replica_does_not_apply_it() {
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let o = mesh_cli(
        &["policy", "set", "a", "--rate", "1/s", "--nats-url", &url],
        &[],
    )
    .await;
    assert_exit(&o, 0);
    // A replica that announces itself and never confirms anything.
    let gateways = js.get_key_value("mesh-gateways").await.expect("bucket");
    let now = mesh_schemas::now_unix_ms();
    let presence = format!(
        r#"{{"id":"gw-silent","version":"test","host":"test","pid":1,"started_unix_ms":{now},"at_unix_ms":{now},"interval_ms":60000}}"#
    );
    gateways
        .put("gw-silent", presence.into())
        .await
        .expect("presence");
    let o = mesh_cli(
        &[
            "policy",
            "set",
            "a",
            "--rate",
            "2/s",
            "--timeout",
            "300ms",
            "--nats-url",
            &url,
        ],
        &[],
    )
    .await;
    assert_exit(&o, 3);
    assert!(stderr(&o).contains("gw-silent"), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("0/1 replicas applied it"),
        "{}",
        stdout(&o)
    );
    // Written all the same, and recorded.
    let kv = js.get_key_value("mesh-policy").await.expect("bucket");
    let rec: PolicyRecord =
        mesh_schemas::decode(&kv.get("a").await.expect("get").expect("value")).expect("decodes");
    assert_eq!(rec.policy.rate.as_deref(), Some("2/s"));
    let event = last_audit(&js, "mesh.audit.policy.a").await;
    assert_eq!(event.replicas, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_resets_every_policy_counter_of_the_agent_and_no_other() {
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client.clone());

    // On a server where no bucket exists yet, resume creates them and resets nothing.
    let o = mesh_cli(&["resume", "deployer", "--json", "--nats-url", &url], &[]).await;
    assert_exit(&o, 0);
    assert_eq!(json(&o)["counters_reset"], 0);

    let o = mesh_cli(
        &["kill", "deployer", "--reason", "cap", "--nats-url", &url],
        &[],
    )
    .await;
    assert_exit(&o, 0);
    let counters = js.get_key_value("mesh-counters").await.expect("bucket");
    let w = Windows::now(&id("deployer"));
    for (key, value) in [
        ("deployer.h.1".to_string(), "64"),
        ("deployer.h.2".to_string(), "40"),
        (w.hour.clone(), "40"),
        (w.day.clone(), "104"),
        (w.cost_day.clone(), "2500000"),
        (w.cost_total.clone(), "2500000"),
        ("planner.h.2".to_string(), "7"),
        ("deployer2.h.2".to_string(), "9"),
    ] {
        counters.put(&key, value.into()).await.expect("put");
    }

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
        stdout(&o).contains("6 policy counters reset"),
        "{}",
        stdout(&o)
    );
    for key in [
        "deployer.h.1".to_string(),
        "deployer.h.2".to_string(),
        w.hour.clone(),
        w.day.clone(),
        w.cost_day.clone(),
        w.cost_total.clone(),
    ] {
        assert!(counters.get(&key).await.expect("get").is_none(), "{key}");
    }
    assert!(counters.get("planner.h.2").await.expect("get").is_some());
    assert!(counters.get("deployer2.h.2").await.expect("get").is_some());
    // A counter starts again from nothing: compare-and-set creation works.
    counters
        .create(&w.hour, "1".into())
        .await
        .expect("created afresh");

    let event = last_audit(&js, "mesh.audit.resume.deployer").await;
    assert_eq!(event.kind, AuditKind::Resume);
    assert_eq!(event.detail.as_deref(), Some("counters_reset=6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_health_instances_heartbeat_cost_and_intents() {
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client.clone());
    // mesh-cli creates the objects; `killed` is killed and has a stale healthy record.
    let o = mesh_cli(
        &["kill", "killed", "--reason", "r", "--nats-url", &url],
        &[],
    )
    .await;
    assert_exit(&o, 0);

    let now = mesh_schemas::now_unix_ms();
    let health = js.get_key_value("mesh-health").await.expect("bucket");
    let put = |agent: &str, state, instances, last, cost| {
        let rec = HealthRecord::new(agent, state, instances, last, cost);
        let bytes = mesh_schemas::encode(&rec).expect("encodes");
        let health = health.clone();
        let key = agent.to_string();
        async move { health.put(key, bytes.into()).await.expect("put") }
    };
    put("planner", HealthState::Healthy, 3, now - 2_000, 1.5).await;
    put("slow", HealthState::Degraded, 1, now - 45_000, 0.0).await;
    put("killed", HealthState::Healthy, 2, now - 1_000, 0.0).await;
    // A record from before a resume: the flag says active, so health starts from unknown.
    put("resumed", HealthState::Killed, 0, now - 90_000, 0.0).await;
    health
        .put("garbage", "not a record".into())
        .await
        .expect("put");

    let counters = js.get_key_value("mesh-counters").await.expect("bucket");
    let w = Windows::now(&id("planner"));
    counters.put(&w.hour, "17".into()).await.expect("put");
    counters
        .put(&w.cost_day, "2500000".into())
        .await
        .expect("put");

    let o = mesh_cli(&["status", "--json", "--nats-url", &url], &[]).await;
    assert_exit(&o, 0);
    let status = json(&o);
    let agent = |name: &str| {
        status["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .find(|a| a["agent"] == name)
            .unwrap_or_else(|| panic!("{name} listed: {status}"))
            .clone()
    };
    let planner = agent("planner");
    assert_eq!(planner["state"], "active");
    assert_eq!(planner["health"], "healthy");
    assert_eq!(planner["instances"], 3);
    assert_eq!(planner["last_heartbeat_unix_ms"], now - 2_000);
    assert_eq!(planner["intents_this_hour"], 17);
    assert_eq!(planner["cost_counted_today_usd"], 2.5);
    assert_eq!(planner["cost_reported_usd"], 1.5);
    assert_eq!(planner["cost_today_usd"], 4.0);
    assert_eq!(agent("slow")["health"], "degraded");
    assert_eq!(agent("slow")["intents_this_hour"], Value::Null);
    assert_eq!(agent("killed")["health"], "killed");
    assert_eq!(agent("resumed")["health"], "unknown");
    assert_eq!(agent("garbage")["health"], "unknown");

    let o = mesh_cli(&["status", "--nats-url", &url], &[]).await;
    assert_exit(&o, 0);
    let text = stdout(&o);
    let header = text.lines().next().expect("header");
    for column in [
        "HEALTH",
        "INST",
        "HEARTBEAT",
        "COST TODAY",
        "INTENTS/H",
        "PENDING",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = text
        .lines()
        .find(|l| l.starts_with("planner"))
        .expect("planner row");
    for cell in ["healthy", " 3 ", "2s ago", "$4.00", " 17 "] {
        assert!(row.contains(cell), "{cell:?} in {row}");
    }
}
