//! Policies: every field's breach does what the contract says; limits hold mesh-wide across
//! replicas and across a gateway restart; a malformed policy never lifts a limit.

use async_nats::HeaderMap;
use mesh_schemas::{AuditKind, OnBreach, Policy};
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{one_gateway, two_processes, wait_live, GatewayProcess};
use mesh_tests::{eventually, operator};

fn caps(cap: u64, on_breach: OnBreach) -> Policy {
    Policy {
        max_intents_per_hour: Some(cap),
        on_breach: Some(on_breach),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_action_outside_allow_send_is_rejected_403_and_the_agent_keeps_running() {
    let (mesh, gw, client) = one_gateway().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    let policy = Policy {
        allow_send: Some(vec!["deploy.*".into()]),
        ..Default::default()
    };
    operator::set_policy(&client, "A", policy).await;
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    let notices = agents::rejections(&mesh.agent("A").await, "A").await;
    agents::send(&js, "A", "B", "delete.db", "no")
        .await
        .expect("publish");
    agents::send(&js, "A", "B", "deploy.service", "yes")
        .await
        .expect("publish");
    rec.wait_for(1).await;
    notices.wait_for(1).await;
    assert_eq!(rec.payloads_from("A"), vec!["yes".to_string()]);
    let (status, reason, _) = notices.all()[0].clone();
    assert_eq!(status, 403);
    assert!(reason.contains("allow_send"), "{reason}");
    assert!(
        operator::kill_record(&client, "A").await.is_none(),
        "not killed"
    );
    gw.stop().await;
}

#[tokio::test]
async fn deny_receive_protects_the_recipient() {
    let (mesh, gw, client) = one_gateway().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    let policy = Policy {
        deny_receive: Some(vec!["admin.>".into()]),
        ..Default::default()
    };
    operator::set_policy(&client, "B", policy).await;
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    let notices = agents::rejections(&mesh.agent("A").await, "A").await;
    agents::send(&js, "A", "B", "admin.reset.all", "no")
        .await
        .expect("publish");
    agents::send(&js, "A", "B", "read", "yes")
        .await
        .expect("publish");
    rec.wait_for(1).await;
    notices.wait_for(1).await;
    assert_eq!(rec.payloads_from("A"), vec!["yes".to_string()]);
    assert!(notices.all()[0].1.contains("deny_receive"));
    gw.stop().await;
}

#[tokio::test]
async fn an_hourly_cap_with_kill_stops_the_agent_at_exactly_the_cap() {
    let (mesh, gw, client) = one_gateway().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    operator::set_policy(&client, "A", caps(20, OnBreach::Kill)).await;
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    let notices = agents::rejections(&mesh.agent("A").await, "A").await;
    for i in 0..30 {
        agents::send(&js, "A", "B", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    notices.wait_for(10).await;
    assert_eq!(rec.payloads_from("A").len(), 20, "delivered up to the cap");
    let kill = operator::kill_record(&client, "A").await.expect("killed");
    assert_eq!(kill.by, "policy:max_intents_per_hour");
    assert!(notices.all().iter().all(|(s, _, _)| *s == 403));
    let events = operator::audit_events(&client).await;
    assert!(events
        .iter()
        .any(|e| e.kind == AuditKind::Autokill && e.agent == "A"));
    gw.stop().await;
}

#[tokio::test]
async fn block_rejects_429_and_observe_delivers_and_records() {
    let (mesh, gw, client) = one_gateway().await;
    let js_blocked = async_nats::jetstream::new(mesh.agent("blocked").await);
    let js_watched = async_nats::jetstream::new(mesh.agent("watched").await);
    operator::set_policy(&client, "blocked", caps(5, OnBreach::Block)).await;
    operator::set_policy(&client, "watched", caps(5, OnBreach::Observe)).await;
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    let notices = agents::rejections(&mesh.agent("blocked").await, "blocked").await;
    for i in 0..8 {
        agents::send(&js_blocked, "blocked", "B", "work", format!("{i}"))
            .await
            .expect("publish");
        agents::send(&js_watched, "watched", "B", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    notices.wait_for(3).await;
    rec.wait_unique("watched", 8).await;
    assert_eq!(rec.payloads_from("blocked").len(), 5);
    assert!(notices
        .all()
        .iter()
        .all(|(s, r, _)| *s == 429 && r.contains("resets")));
    assert!(operator::kill_record(&client, "blocked").await.is_none());
    assert!(operator::kill_record(&client, "watched").await.is_none());
    eventually("an observe record", || {
        let client = client.clone();
        async move {
            operator::audit_events(&client)
                .await
                .iter()
                .any(|e| e.kind == AuditKind::Observe && e.agent == "watched")
        }
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_cost_ceiling_counts_mesh_cost_and_kills_before_it_is_crossed() {
    let (mesh, gw, client) = one_gateway().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    let policy = Policy {
        max_cost_usd: Some(1.0),
        ..Default::default()
    };
    operator::set_policy(&client, "A", policy).await;
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    let notices = agents::rejections(&mesh.agent("A").await, "A").await;
    for i in 0..5 {
        let mut h = HeaderMap::new();
        h.insert("Mesh-Cost", "0.30");
        agents::send_with(&js, "mesh.intent.A.B.llm.call", h, format!("{i}"))
            .await
            .expect("publish");
    }
    notices.wait_for(2).await;
    assert_eq!(
        rec.payloads_from("A").len(),
        3,
        "$0.90 delivered, $1.20 refused"
    );
    let kill = operator::kill_record(&client, "A").await.expect("killed");
    assert_eq!(kill.by, "policy:max_cost_usd");
    gw.stop().await;
}

#[tokio::test]
async fn a_cap_holds_mesh_wide_with_two_replicas_and_across_a_restart() {
    let (mesh, [mut g1, _g2], client) = two_processes().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    operator::set_policy(&client, "A", caps(60, OnBreach::Block)).await;
    // Eight recipients, pinned to one replica or the other.
    let rec = Recorder::default();
    let mut serving = Vec::new();
    for r in 0..8 {
        let id = format!("R{r}");
        let c = mesh.agent(&id).await;
        serving.push(agents::serve(&c, &id, "i1", rec.clone(), true).await);
    }
    let notices = agents::rejections(&mesh.agent("A").await, "A").await;
    for i in 0..40 {
        agents::send(&js, "A", &format!("R{}", i % 8), "work", format!("{i}"))
            .await
            .expect("publish");
    }
    rec.wait_unique("A", 40).await;

    // Restart one replica in the middle of the window: the count lives in KV.
    g1.terminate();
    let g1 = GatewayProcess::start_in(&mesh, "gw1");
    wait_live(&client, &["gw1", "gw2"]).await;
    for i in 40..100 {
        agents::send(&js, "A", &format!("R{}", i % 8), "work", format!("{i}"))
            .await
            .expect("publish");
    }
    // Every intent ends delivered or rejected 429.
    eventually("all 100 intents accounted for", || {
        let (rec, notices) = (rec.clone(), notices.clone());
        async move { rec.payloads_from("A").len() + notices.all().len() >= 100 }
    })
    .await;
    let delivered = rec.payloads_from("A").len();
    eprintln!(
        "cap 60 over two replicas and a restart: {delivered} delivered, {} rejected 429",
        notices.all().len()
    );
    assert!(delivered <= 60, "cap 60 exceeded mesh-wide: {delivered}");
    assert!(delivered >= 45, "far below the cap: {delivered}");
    assert!(notices.all().iter().all(|(s, _, _)| *s == 429));
    drop(g1);
}

#[tokio::test]
async fn a_rate_limit_throttles_without_dropping_and_holds_mesh_wide() {
    let (mesh, [_g1, _g2], client) = two_processes().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    let policy = Policy {
        rate: Some("40/s".into()),
        burst: Some(10),
        ..Default::default()
    };
    operator::set_policy(&client, "A", policy).await;
    let rec = Recorder::default();
    let mut serving = Vec::new();
    for r in 0..6 {
        let id = format!("R{r}");
        let c = mesh.agent(&id).await;
        serving.push(agents::serve(&c, &id, "i1", rec.clone(), true).await);
    }
    let started = std::time::Instant::now();
    for i in 0..90 {
        agents::send(&js, "A", &format!("R{}", i % 6), "work", format!("{i}"))
            .await
            .expect("publish");
    }
    rec.wait_unique("A", 90).await;
    let took = started.elapsed().as_secs_f64();
    // 90 intents at 40/s with a burst of 10 need at least (90 - 10) / 40 = 2 s mesh-wide.
    assert!(
        took >= 1.9,
        "90 intents delivered in {took:.2} s: faster than 40/s + burst 10"
    );
    assert_eq!(rec.payloads_from("A").len(), 90, "throttled, not dropped");
}

#[tokio::test]
async fn a_malformed_policy_is_reported_and_does_not_lift_the_limit() {
    let (mesh, gw, client) = one_gateway().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    operator::set_policy(&client, "A", caps(3, OnBreach::Block)).await;
    // Written behind the CLI's back: garbage, then a record that fails validation.
    let kv = async_nats::jetstream::new(client.clone())
        .get_key_value("mesh-policy")
        .await
        .expect("bucket");
    kv.put("A", bytes::Bytes::from_static(b"\xc1 garbage"))
        .await
        .expect("put");
    kv.put(
        "A",
        bytes::Bytes::from_static(br#"{"policy":{"rate":"fast"}}"#),
    )
    .await
    .expect("put");
    eventually("both bad records reported", || {
        let client = client.clone();
        async move {
            operator::audit_events(&client)
                .await
                .iter()
                .filter(|e| e.kind == AuditKind::Policy && e.reason.contains("invalid"))
                .count()
                >= 2
        }
    })
    .await;
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    let notices = agents::rejections(&mesh.agent("A").await, "A").await;
    for i in 0..6 {
        agents::send(&js, "A", "B", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    notices.wait_for(3).await;
    assert_eq!(
        rec.payloads_from("A").len(),
        3,
        "the last valid cap still holds"
    );
    gw.stop().await;
}

#[tokio::test]
async fn cost_reported_only_in_heartbeats_kills_at_the_ceiling_without_any_intent() {
    let (mesh, gw, client) = one_gateway().await;
    let policy = Policy {
        max_cost_usd: Some(50.0),
        ..Default::default()
    };
    operator::set_policy(&client, "spender", policy).await;
    let hb = mesh.agent("spender").await;
    let mut cost = 0.0;
    // Report $10 more every beat until the gateway kills the agent (bounded: 20 beats).
    for _ in 0..20 {
        cost += 10.0;
        let mut h = HeaderMap::new();
        h.insert("Mesh-Instance", "s1");
        h.insert("Mesh-Cost-Total", format!("{cost:.2}").as_str());
        hb.publish_with_headers("mesh.hb.spender", h, bytes::Bytes::new())
            .await
            .expect("heartbeat");
        hb.flush().await.expect("flush");
        let killed = tokio::time::timeout(std::time::Duration::from_millis(500), async {
            loop {
                if operator::kill_record(&client, "spender").await.is_some() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        if killed.is_ok() {
            break;
        }
    }
    let kill = operator::kill_record(&client, "spender")
        .await
        .expect("killed by policy");
    assert_eq!(kill.by, "policy:max_cost_usd");
    assert!(cost > 50.0, "killed at ${cost}, before the ceiling");
    assert!(cost <= 70.0, "killed only at ${cost}");
    gw.stop().await;
}
