//! Health from heartbeats: several instances beat, they stop, and the agent goes degraded then
//! unreachable at the policy's thresholds, with alert events, audit records and records in
//! `mesh-health`; `on_unreachable = kill` kills it; bad heartbeats are ignored; with two
//! replicas only the leader alerts.
//!
//! Thresholds are short (300 ms / 900 ms) so that no test waits long; every wait is on an event
//! or a record, with the deadline of `mesh_tests::eventually`.

use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subscriber};
use futures::{FutureExt, StreamExt};
use mesh_gateway::GatewayConfig;
use mesh_schemas::{
    decode, encode, AuditEvent, AuditKind, HealthRecord, HealthState, KillRecord, KillState,
    OnUnreachable, Policy, PolicyRecord,
};
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::{eventually, init_tracing, operator, registered, Mesh, DEADLINE};
use tokio_util::sync::CancellationToken;

const DEGRADED_AFTER: Duration = Duration::from_millis(300);
const UNREACHABLE_AFTER: Duration = Duration::from_millis(900);
/// How often the test instances beat.
const BEAT_EVERY: Duration = Duration::from_millis(50);
/// How late an alert may come after its threshold: an evaluation period (75 ms here) plus a
/// loaded CI machine's scheduling.
const SLACK: Duration = Duration::from_secs(2);

fn short_policy(on_unreachable: Option<OnUnreachable>) -> Policy {
    Policy {
        degraded_after: Some("300ms".into()),
        unreachable_after: Some("900ms".into()),
        on_unreachable,
        ..Default::default()
    }
}

/// A secured mesh with its objects and `policies` in place, then gateway replicas `ids`, all
/// live, and an operator client. Policies are written before the replicas start, so they are
/// in force from the first evaluation (a replica judges nothing before its policy watch has
/// replayed).
async fn mesh(
    policies: &[(&str, Policy)],
    ids: &[&str],
) -> (Mesh, Vec<GatewayTask>, async_nats::Client) {
    init_tracing();
    let mesh = Mesh::start();
    let client = mesh.operator().await;
    let js = async_nats::jetstream::new(client.clone());
    let objects = mesh_gateway::setup::ensure(&js, &GatewayConfig::default())
        .await
        .expect("mesh objects");
    for (agent, policy) in policies {
        policy.validate().expect("valid policy");
        let record = PolicyRecord::new(policy.clone(), "test");
        objects
            .policy
            .put(*agent, encode(&record).expect("encode policy").into())
            .await
            .expect("put policy");
    }
    let mut gws = Vec::new();
    for id in ids {
        gws.push(GatewayTask::start_in(&mesh, id, |_| {}).await);
    }
    wait_live(&client, ids).await;
    (mesh, gws, client)
}

/// One agent instance beating every [`BEAT_EVERY`] with a fixed cumulative cost, on its own
/// connection with the agent's credentials, like a real instance.
struct Beater {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Instant>,
}

impl Beater {
    async fn start(mesh: &Mesh, agent: &str, instance: &str, cost_total: Option<f64>) -> Self {
        let client = mesh.agent(agent).await;
        let subject = format!("mesh.hb.{agent}");
        let instance = instance.to_string();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(BEAT_EVERY);
            let mut last = Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.cancelled() => break,
                }
                let mut h = HeaderMap::new();
                h.insert("Mesh-Instance", instance.as_str());
                if let Some(c) = cost_total {
                    h.insert("Mesh-Cost-Total", c.to_string().as_str());
                }
                // Taken before the publish: the gateway hears the beat no earlier than this.
                last = Instant::now();
                client
                    .publish_with_headers(subject.clone(), h, "beat".into())
                    .await
                    .expect("publish heartbeat");
            }
            client.flush().await.expect("flush heartbeats");
            last
        });
        Beater { stop, task }
    }

    /// Stops beating; returns when the last heartbeat was sent.
    async fn stop(self) -> Instant {
        self.stop.cancel();
        self.task.await.expect("beater ends")
    }
}

/// Subscribes to `subject` and makes sure the server has registered it.
async fn listen(client: &async_nats::Client, subject: String) -> Subscriber {
    let sub = client.subscribe(subject).await.expect("subscribe");
    registered(client).await;
    sub
}

/// The next alert event on `sub`.
async fn next_event(sub: &mut Subscriber, what: &str) -> AuditEvent {
    let msg = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the {what} alert"))
        .expect("subscription open");
    decode(&msg.payload).expect("alert decodes")
}

/// Alerts already received on `sub`, without waiting.
fn drain(sub: &mut Subscriber) -> usize {
    let mut n = 0;
    while let Some(Some(_)) = sub.next().now_or_never() {
        n += 1;
    }
    n
}

async fn health_record(client: &async_nats::Client, agent: &str) -> Option<HealthRecord> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("mesh-health").await.ok()?;
    let bytes = kv.get(agent).await.ok()??;
    Some(decode(&bytes).expect("health record decodes"))
}

/// Waits until `agent`'s health record satisfies `ok`, and returns it.
async fn wait_record(
    client: &async_nats::Client,
    agent: &str,
    what: &str,
    ok: impl Fn(&HealthRecord) -> bool,
) -> HealthRecord {
    eventually(&format!("{agent}: {what}"), || async {
        health_record(client, agent).await.is_some_and(|r| ok(&r))
    })
    .await;
    health_record(client, agent).await.expect("record")
}

async fn health_events(client: &async_nats::Client, agent: &str) -> Vec<AuditEvent> {
    operator::audit_events(client)
        .await
        .into_iter()
        .filter(|e| e.kind == AuditKind::Health && e.agent == agent)
        .collect()
}

fn state_of(event: &AuditEvent) -> String {
    event
        .detail
        .as_deref()
        .and_then(|d| d.split(' ').find_map(|kv| kv.strip_prefix("state=")))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn instances_stop_and_health_goes_degraded_then_unreachable_on_time() {
    let agent = "hb-agent";
    let (mesh, mut gws, client) = mesh(&[(agent, short_policy(None))], &["gw1"]).await;
    let mut degraded = listen(&client, format!("mesh.event.degraded.{agent}")).await;
    let mut unreachable = listen(&client, format!("mesh.event.unreachable.{agent}")).await;
    let mut healthy = listen(&client, format!("mesh.event.healthy.{agent}")).await;

    let i1 = Beater::start(&mesh, agent, "i1", Some(1.5)).await;
    let i2 = Beater::start(&mesh, agent, "i2", Some(2.0)).await;
    let rec = wait_record(&client, agent, "healthy with 2 instances", |r| {
        r.state == HealthState::Healthy && r.instances == 2
    })
    .await;
    assert!(rec.last_heartbeat_unix_ms > 0);
    wait_record(&client, agent, "reported cost 3.5", |r| {
        r.reported_cost_usd == 3.5
    })
    .await;

    // One instance stops: still healthy, one instance alive after unreachable_after.
    i2.stop().await;
    wait_record(&client, agent, "healthy with 1 instance", |r| {
        r.state == HealthState::Healthy && r.instances == 1
    })
    .await;
    assert_eq!(drain(&mut degraded), 0, "one live instance is enough");

    // The last one stops. Follow the record from here, so that no state it passes through is
    // missed however fast it goes.
    let js = async_nats::jetstream::new(client.clone());
    let mut records = js
        .get_key_value("mesh-health")
        .await
        .expect("health bucket")
        .watch(agent)
        .await
        .expect("watch the health record");
    let last_beat = i1.stop().await;
    let event = next_event(&mut degraded, "degraded").await;
    let after = last_beat.elapsed();
    assert!(
        after >= DEGRADED_AFTER && after < DEGRADED_AFTER + SLACK,
        "degraded {after:?} after the last heartbeat; degraded_after is {DEGRADED_AFTER:?}"
    );
    assert_eq!(
        (event.kind, event.agent.as_str()),
        (AuditKind::Health, agent)
    );
    assert_eq!(state_of(&event), "degraded");
    assert!(event.reason.contains("degraded_after 300ms"), "{event:?}");

    let event = next_event(&mut unreachable, "unreachable").await;
    let after = last_beat.elapsed();
    assert!(
        after >= UNREACHABLE_AFTER && after < UNREACHABLE_AFTER + SLACK,
        "unreachable {after:?} after the last heartbeat; unreachable_after is {UNREACHABLE_AFTER:?}"
    );
    assert_eq!(state_of(&event), "unreachable");

    // The record went degraded with the instance still counted alive, then unreachable with
    // none, and kept the cost the silent instances reported.
    let mut seen: Vec<(HealthState, u32)> = Vec::new();
    let last = loop {
        let entry = tokio::time::timeout(DEADLINE, records.next())
            .await
            .expect("health record changes within the deadline")
            .expect("watch open")
            .expect("watch entry");
        let rec: HealthRecord = decode(&entry.value).expect("health record decodes");
        if seen.is_empty() && rec.state == HealthState::Healthy {
            continue; // a refresh written before the last heartbeat aged
        }
        if seen.last() != Some(&(rec.state, rec.instances)) {
            seen.push((rec.state, rec.instances));
        }
        if rec.state == HealthState::Unreachable {
            break rec;
        }
    };
    assert_eq!(
        seen,
        [(HealthState::Degraded, 1), (HealthState::Unreachable, 0)],
        "(state, instances) of the record after the last heartbeat"
    );
    assert_eq!(
        last.reported_cost_usd, 3.5,
        "silent instances keep their cost"
    );

    // An instance comes back.
    let i1 = Beater::start(&mesh, agent, "i1", Some(1.5)).await;
    let event = next_event(&mut healthy, "healthy").await;
    assert_eq!(state_of(&event), "healthy");
    wait_record(&client, agent, "healthy again with 1 instance", |r| {
        r.state == HealthState::Healthy && r.instances == 1
    })
    .await;
    i1.stop().await;

    // The audit trail has the three changes, once each, in order.
    eventually("three health records in the audit trail", || async {
        health_events(&client, agent).await.len() >= 3
    })
    .await;
    let states: Vec<String> = health_events(&client, agent)
        .await
        .iter()
        .take(3)
        .map(state_of)
        .collect();
    assert_eq!(states, ["degraded", "unreachable", "healthy"]);
    gws.remove(0).stop().await;
}

#[tokio::test]
async fn an_unreachable_agent_is_killed_when_its_policy_says_so() {
    let agent = "hb-kill";
    let (mesh, mut gws, client) = mesh(
        &[(agent, short_policy(Some(OnUnreachable::Kill)))],
        &["gw1"],
    )
    .await;
    let mut unreachable = listen(&client, format!("mesh.event.unreachable.{agent}")).await;
    let mut autokill = listen(&client, format!("mesh.event.autokill.{agent}")).await;

    let i1 = Beater::start(&mesh, agent, "i1", None).await;
    wait_record(&client, agent, "healthy", |r| {
        r.state == HealthState::Healthy
    })
    .await;
    let last_beat = i1.stop().await;

    next_event(&mut unreachable, "unreachable").await;
    let event = next_event(&mut autokill, "autokill").await;
    assert!(last_beat.elapsed() >= UNREACHABLE_AFTER);
    assert_eq!(event.kind, AuditKind::Autokill);
    assert!(event.actor.starts_with("policy:"), "{event:?}");

    let js = async_nats::jetstream::new(client.clone());
    let kill = js.get_key_value("mesh-kill").await.expect("kill bucket");
    let bytes = kill
        .get(agent)
        .await
        .expect("read kill flag")
        .expect("kill flag written");
    let record: KillRecord = decode(&bytes).expect("kill record decodes");
    assert_eq!(record.state, KillState::Killed);
    assert!(record.by.starts_with("policy:"), "{record:?}");
    assert!(record.reason.contains("unreachable_after"), "{record:?}");

    wait_record(&client, agent, "killed", |r| r.state == HealthState::Killed).await;

    // Resume: health starts afresh, and the agent is healthy again when it beats.
    operator::resume(&client, agent).await;
    let i1 = Beater::start(&mesh, agent, "i1", None).await;
    wait_record(&client, agent, "healthy after resume", |r| {
        r.state == HealthState::Healthy && r.instances == 1
    })
    .await;
    i1.stop().await;
    gws.remove(0).stop().await;
}

#[tokio::test]
async fn malformed_heartbeats_are_ignored_and_delivery_goes_on() {
    let (mesh, mut gws, client) = mesh(&[], &["gw1"]).await;
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;

    let beat = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    };
    // E's own heartbeats with bad headers, sent with E's credentials.
    let bad_from_e: Vec<HeaderMap> = vec![
        HeaderMap::new(),
        beat(&[("Mesh-Cost-Total", "5")]),
        beat(&[("Mesh-Instance", "x"), ("Mesh-Cost-Total", "ten")]),
        beat(&[("Mesh-Instance", "x"), ("Mesh-Cost-Total", "-3")]),
        beat(&[("Mesh-Instance", " ")]),
    ];
    // Heartbeats of ids that can hold no credentials: no agent may publish them, so a trusted
    // identity (the operator, allowed all of `mesh.>`) injects them; the gateway must still
    // ignore them.
    let bad_subjects: Vec<(String, HeaderMap)> = vec![
        (
            "mesh.hb.bad$id".into(),
            beat(&[("Mesh-Instance", "x"), ("Mesh-Cost-Total", "5")]),
        ),
        (
            format!("mesh.hb.{}", "r".repeat(65)),
            beat(&[("Mesh-Instance", "x")]),
        ),
    ];
    // Many of them, to exercise the log throttle too. The operator's flush returns once the
    // server has queued them for the gateway, so they reach it before anything E sends next.
    for _ in 0..200 {
        for (subject, headers) in &bad_subjects {
            client
                .publish_with_headers(subject.clone(), headers.clone(), "junk".into())
                .await
                .expect("publish");
        }
    }
    client.flush().await.expect("flush");
    let e = mesh.agent("E").await;
    for _ in 0..200 {
        for headers in &bad_from_e {
            e.publish_with_headers("mesh.hb.E", headers.clone(), "junk".into())
                .await
                .expect("publish");
        }
    }
    // Then one good heartbeat of E, on the same connection (so it is heard after the bad ones).
    e.publish_with_headers(
        "mesh.hb.E",
        beat(&[("Mesh-Instance", "y"), ("Mesh-Cost-Total", "1.0")]),
        "ok".into(),
    )
    .await
    .expect("publish");
    e.flush().await.expect("flush");

    // The first record of E already counts the good heartbeat only.
    let record = wait_record(&client, "E", "a record", |r| r.instances >= 1).await;
    assert_eq!(
        (record.state, record.instances, record.reported_cost_usd),
        (HealthState::Healthy, 1, 1.0),
        "{record:?}"
    );

    // And the gateway still delivers.
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    agents::send(&js, "A", "B", "work", "after-bad-heartbeats")
        .await
        .expect("publish intent");
    rec.wait_for(1).await;
    assert_eq!(rec.payloads_from("A"), vec!["after-bad-heartbeats"]);
    gws.remove(0).stop().await;
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_alerts() {
    let agent = "hb-two";
    let (mesh, mut gws, client) = mesh(&[(agent, short_policy(None))], &["gw1", "gw2"]).await;
    let mut degraded = listen(&client, format!("mesh.event.degraded.{agent}")).await;
    let mut unreachable = listen(&client, format!("mesh.event.unreachable.{agent}")).await;

    let i1 = Beater::start(&mesh, agent, "i1", None).await;
    wait_record(&client, agent, "healthy", |r| {
        r.state == HealthState::Healthy
    })
    .await;
    i1.stop().await;

    let first = next_event(&mut degraded, "degraded").await;
    assert_eq!(
        first.actor, "gateway:gw1",
        "the replica with the smallest id leads"
    );
    // The unreachable alert comes 600 ms after the degraded one, from the same leader; a
    // second replica's degraded alert would have arrived by then.
    let event = next_event(&mut unreachable, "unreachable").await;
    assert_eq!(event.actor, "gateway:gw1");
    assert_eq!(
        drain(&mut degraded),
        0,
        "one degraded alert, not one per replica"
    );
    assert_eq!(drain(&mut unreachable), 0, "one unreachable alert");
    eventually("two health records in the audit trail", || async {
        health_events(&client, agent).await.len() >= 2
    })
    .await;
    assert_eq!(health_events(&client, agent).await.len(), 2);

    for gw in gws.drain(..) {
        gw.stop().await;
    }
}
