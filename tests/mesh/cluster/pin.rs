//! Order across a change of a pinned consumer's leader (limit 11): nats-server forgets the pin
//! of `mesh_deliver`, or of a parked recipient's `in_<id>`, when its leader changes and pins
//! whichever replica pulls next, while the replica that had the pin still holds a queue for a
//! slow recipient. The
//! leader is moved with the consumer's step-down API (what the loss of its node does, without
//! the outage), a few times, while intents flow to a recipient that answers slowly; the intents
//! from the one sender must still arrive in order, and all of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use mesh_testkit::Cluster;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::node_loss::{flood, order_asserted_on};
use mesh_tests::{connect, eventually, init_tracing};

use super::r3;

/// The node leading consumer `name` of the intents stream.
async fn consumer_leader(js: &jetstream::Context, name: &str) -> Option<String> {
    let stream = js.get_stream("MESH_INTENTS").await.ok()?;
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(name).await.ok()?;
    let info = consumer.info().await.ok()?;
    info.cluster.as_ref().and_then(|c| c.leader.clone())
}

/// On a three-node cluster with two gateways, moves the leader of consumer `name` four times
/// while `sender` floods `builder`, which answers in 15 ms against an intent every 10 ms; then
/// checks that every intent arrived, in order. Each step-down gives the pin to whichever replica
/// pulls first; four of them move it to the other replica at least once in all but one run in
/// sixteen.
async fn step_down_under_flood(name: &str, tweak: fn(&mut mesh_gateway::GatewayConfig)) {
    init_tracing();
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let gw1 = GatewayTask::start(&urls[0], "gw1", tweak).await;
    let gw2 = GatewayTask::start(&urls[1], "gw2", tweak).await;
    let client = connect(&urls[2]).await;
    wait_live(&client, &["gw1", "gw2"]).await;
    let builder = Recorder::default();
    let _b = agents::serve_slowly(
        &connect(&urls[2]).await,
        "builder",
        "b1",
        builder.clone(),
        true,
        Duration::from_millis(15),
    )
    .await;
    let url = &urls[2];
    let js = jetstream::new(client.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let sender = flood(
        connect(url).await,
        "sender",
        "builder",
        Duration::from_millis(10),
        stop.clone(),
    );
    builder.wait_unique("sender", 20).await;
    for _ in 0..4 {
        eventually("the consumer exists", || {
            let js = js.clone();
            async move { consumer_leader(&js, name).await.is_some() }
        })
        .await;
        let before = consumer_leader(&js, name).await;
        let reply = client
            .request(
                format!("$JS.API.CONSUMER.LEADER.STEPDOWN.MESH_INTENTS.{name}"),
                "".into(),
            )
            .await
            .expect("step-down answered");
        tracing::info!(answer = %String::from_utf8_lossy(&reply.payload), ?before, name, "stepped down");
        eventually("the consumer has a new leader", || {
            let js = js.clone();
            let before = before.clone();
            async move {
                let now = consumer_leader(&js, name).await;
                now.is_some() && now != before
            }
        })
        .await;
        let seen = builder.payloads_from("sender").len();
        builder.wait_unique("sender", seen + 20).await;
    }
    stop.store(true, Ordering::SeqCst);
    let sent = sender.await.expect("flood");
    builder.wait_unique("sender", sent).await;
    let got = builder.payloads_from("sender");
    let inversions: Vec<String> = got
        .windows(2)
        .filter(|w| w[0].parse::<u64>().ok() >= w[1].parse::<u64>().ok())
        .map(|w| format!("{} before {}", w[0], w[1]))
        .collect();
    assert_eq!(got.len(), sent);
    gw1.stop().await;
    gw2.stop().await;
    let server = client.server_info().version;
    if !order_asserted_on(&server) {
        tracing::warn!(?inversions, %server, "order not asserted on this release (limit 11)");
        return;
    }
    assert!(
        inversions.is_empty(),
        "{} of {sent} intents out of order: {inversions:?}",
        inversions.len()
    );
}

/// The active replica holds a queue for builder (well under park_backlog in the few seconds
/// this runs) when the shared consumer's leader moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_when_the_shared_consumer_changes_leader_under_a_queue() {
    step_down_under_flood("mesh_deliver", r3).await;
}

/// The same for a parked recipient: its consumer `in_<id>` is pinned too, and the replica that
/// gains its pin must not start newer intents while the previous holder still delivers older
/// ones (the inversions the chaos soak found). A backlog of 10 parks builder within the first
/// second of the flood; it answers slower than intents arrive, so it stays parked and its drain
/// busy for the whole test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_when_a_parked_recipients_consumer_changes_leader() {
    step_down_under_flood("in_builder", |c| {
        r3(c);
        c.park_backlog = 10;
    })
    .await;
}
