//! Kill and resume: nothing reaches or leaves a killed agent once `kill` returns; held work
//! replays in order on resume; outbound rejection is retroactive and recorded.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use mesh_schemas::AuditKind;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{two_processes, wait_live, GatewayProcess};
use mesh_tests::operator;
use mesh_tests::{eventually, init_tracing, Mesh};

#[tokio::test]
async fn kill_under_load_stops_four_instances_at_once_and_resume_replays_in_order() {
    let (mesh, [_g1, _g2], client) = two_processes().await;

    // The deployer runs as four instances; infra receives what the deployer sends.
    let to_deployer = Recorder::default();
    let mut instances = Vec::new();
    for i in 0..4 {
        let c = mesh.agent("deployer").await;
        instances
            .push(agents::serve(&c, "deployer", &format!("d{i}"), to_deployer.clone(), true).await);
    }
    let (to_infra, _infra) = agents::serve_at(&mesh, &mesh.url(), "infra", "i1").await;
    let rejected = agents::rejections(&mesh.agent("deployer").await, "deployer").await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent_in = Arc::new(AtomicUsize::new(0));
    let sent_out = Arc::new(AtomicUsize::new(0));
    let js_planner = async_nats::jetstream::new(mesh.agent("planner").await);
    let js_deployer = async_nats::jetstream::new(mesh.agent("deployer").await);
    let planner = agents::flood(
        js_planner,
        "planner",
        "deployer",
        "deploy.service",
        stop.clone(),
        sent_in.clone(),
    );
    let rogue = agents::flood(
        js_deployer,
        "deployer",
        "infra",
        "deploy.service",
        stop.clone(),
        sent_out.clone(),
    );

    to_deployer.wait_for(100).await;
    to_infra.wait_for(100).await;
    let fenced = operator::kill(&client, "deployer", "deployed 47 of 3").await;
    assert_eq!(fenced.replicas, 2, "both replicas confirmed");
    let delivered_in_at_kill = to_deployer.len();
    let delivered_out_at_kill = to_infra.len();

    // Keep both floods going after the kill, then stop them.
    let target_in = sent_in.load(Ordering::SeqCst) + 300;
    let target_out = sent_out.load(Ordering::SeqCst) + 300;
    eventually("300 more intents each way after the kill", || {
        let (a, b) = (sent_in.clone(), sent_out.clone());
        async move { a.load(Ordering::SeqCst) >= target_in && b.load(Ordering::SeqCst) >= target_out }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    planner.await.expect("planner");
    rogue.await.expect("rogue");
    let total_in = sent_in.load(Ordering::SeqCst);
    let total_out = sent_out.load(Ordering::SeqCst);

    // Every outbound intent ends delivered (before the kill) or rejected: wait for that.
    let rejected_out = total_out - delivered_out_at_kill;
    rejected.wait_for(rejected_out).await;
    assert_eq!(
        to_infra.len(),
        delivered_out_at_kill,
        "nothing left the killed agent"
    );
    assert!(rejected
        .all()
        .iter()
        .all(|(status, reason, _)| *status == 403 && reason.contains("deployed 47 of 3")));

    // Inbound: held durable in JetStream, none delivered.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("MESH_INTENTS").await.expect("stream");
    let info = stream.consumer_info("in_deployer").await.expect("consumer");
    assert!(
        info.paused,
        "the hold lives in NATS: the consumer is paused"
    );
    assert_eq!(
        to_deployer.len(),
        delivered_in_at_kill,
        "nothing reached the killed agent"
    );
    let held = info.num_pending + info.num_ack_pending as u64;
    assert_eq!(held as usize, total_in - delivered_in_at_kill);

    // Resume: everything held arrives, in order, none missing.
    operator::resume(&client, "deployer").await;
    to_deployer.wait_for(total_in).await;
    to_deployer.assert_in_order("planner", total_in);
    let per_instance: std::collections::HashSet<String> =
        to_deployer.all().into_iter().map(|r| r.instance).collect();
    assert!(
        per_instance.len() > 1,
        "instances share the work: {per_instance:?}"
    );

    // The audit trail has every rejection.
    let events = operator::audit_events(&client).await;
    let rejects = events
        .iter()
        .filter(|e| e.kind == AuditKind::Reject && e.agent == "deployer")
        .count();
    assert_eq!(rejects, rejected_out);
}

#[tokio::test]
async fn outbound_rejection_is_retroactive_with_notice_and_record() {
    init_tracing();
    let mesh = Mesh::start();
    let _g1 = GatewayProcess::start_in(&mesh, "gw1");
    let client = mesh.operator().await;
    wait_live(&client, &["gw1"]).await;
    let js = async_nats::jetstream::new(client.clone());
    let rogue = mesh.agent("rogue").await;
    let rejected = agents::rejections(&rogue, "rogue").await;

    // Nobody serves `target` yet, so the rogue's intents wait as pending work.
    let js_rogue = async_nats::jetstream::new(rogue);
    for i in 0..25 {
        agents::send(&js_rogue, "rogue", "target", "delete.db", format!("{i}"))
            .await
            .expect("publish");
    }
    let stream = js.get_stream("MESH_INTENTS").await.expect("stream");
    eventually("the gateway holds the rogue's intents", || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info("in_target")
                .await
                .is_ok_and(|i| i.num_ack_pending > 0)
        }
    })
    .await;
    operator::kill(&client, "rogue", "runaway deletes").await;

    // Now the target comes online: it must get none of them.
    let (rec, _t) = agents::serve_at(&mesh, &mesh.url(), "target", "t1").await;
    rejected.wait_for(25).await;
    let notices = rejected.all();
    assert_eq!(notices.len(), 25);
    assert!(notices
        .iter()
        .all(|(s, r, id)| *s == 403 && r.contains("runaway deletes") && !id.is_empty()));
    // The target is served and its parked consumer is drained (then deleted: unparked): the
    // rejected intents are finished.
    eventually("the target consumer is drained", || {
        let stream = stream.clone();
        async move {
            match stream.consumer_info("in_target").await {
                Ok(i) => i.num_pending == 0 && i.num_ack_pending == 0,
                Err(_) => true,
            }
        }
    })
    .await;
    assert!(
        rec.is_empty(),
        "a killed sender's pending intents were delivered: {:?}",
        rec.all()
    );
    let events = operator::audit_events(&client).await;
    let records: Vec<_> = events
        .iter()
        .filter(|e| e.kind == AuditKind::Reject)
        .collect();
    assert_eq!(records.len(), 25);
    assert!(records
        .iter()
        .all(|e| e.agent == "rogue" && e.status == Some(403)));
}
