//! A three-node JetStream cluster losing nodes under a gateway: presence writes refused, a node
//! lost while intents flow and kills are written (`node_loss`, and `leaders` for the leaders of
//! `KV_mesh-kill` and of the meta group), a rolling restart of every node (`rolling`), a
//! gateway given every URL losing its node (`failover`), starting and killing while the
//! cluster has no quorum (`quorum`), a region's leaf node losing the hub node it is linked
//! through (`region`), and all of it at random for a while (`chaos`). Unless a test says
//! otherwise, each gateway gets one node's URL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use mesh_testkit::Cluster;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::node_loss::flood;
use mesh_tests::{connect, init_tracing};

mod chaos;
mod durability;
mod failover;
mod leaders;
mod node_loss;
mod pin;
mod policy;
mod quorum;
mod region;
mod rolling;

/// Gateway settings for R3.
fn r3(cfg: &mut mesh_gateway::GatewayConfig) {
    cfg.replicas = 3;
}

/// Sets the largest message `KV_<bucket>` accepts: 1 byte makes every write fail, as when the
/// bucket cannot be written during an election, without touching anything else.
async fn set_max_msg_size(js: &jetstream::Context, bucket: &str, size: i32) {
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .expect("bucket stream");
    let mut config = stream.info().await.expect("stream info").config.clone();
    config.max_message_size = size;
    js.update_stream(config).await.expect("update stream");
}

/// Issue 13, point 2: a replica that cannot refresh its presence is no longer waited for by a
/// kill, so it must stop delivering before its record lapses, and deliver again once it is
/// listed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_presence_lapses_delivers_nothing() {
    init_tracing();
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let js = jetstream::new(connect(&urls[1]).await);
    let gw = GatewayTask::start(&urls[0], "gw1", r3).await;
    let client = connect(&urls[2]).await;
    wait_live(&client, &["gw1"]).await;
    let to_b = Recorder::default();
    let _b = agents::serve(&connect(&urls[2]).await, "B", "b1", to_b.clone(), true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = flood(
        connect(&urls[2]).await,
        "A",
        "B",
        Duration::from_millis(10),
        stop.clone(),
    );
    to_b.wait_for(20).await;

    set_max_msg_size(&js, "mesh-gateways", 1).await;
    // What `mesh-cli kill` would see: no live replica to wait for.
    wait_live(&client, &[]).await;
    let lapsed = to_b.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        to_b.len(),
        lapsed,
        "gw1 delivered while no kill would wait for it"
    );

    set_max_msg_size(&js, "mesh-gateways", 64 * 1024).await;
    wait_live(&client, &["gw1"]).await;
    to_b.wait_for(lapsed + 20).await;
    stop.store(true, Ordering::SeqCst);
    let _ = sender.await;
    gw.stop().await;
}

/// A park that finds `in_<id>` already there (left by a replica that parked the recipient and
/// lost its place, or a park retried after a timeout that had landed after all) replaces it from
/// the earlier of the two first unacknowledged intents. An R3 consumer that starts at a sequence
/// and has acked nothing reports an ack floor of 0 (a single node reports the sequence before its
/// start): read as is, the replacement started at the stream's first intent and delivered
/// everything ever sent to the recipient again (the chaos soak: 10,699 duplicates in 10 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_park_that_replaces_an_unacked_parked_consumer_keeps_its_start() {
    use async_nats::jetstream::consumer::DeliverPolicy;
    use mesh_gateway::{setup, GatewayConfig};
    use mesh_schemas::AgentId;

    init_tracing();
    let cluster = Cluster::start(3);
    let js = mesh_tests::node_loss::ready_r3(&connect(&cluster.urls()[0]).await).await;
    let mut cfg = GatewayConfig::default();
    r3(&mut cfg);
    let objects = setup::ensure(&js, &cfg).await.expect("mesh objects");
    let stream = &objects.intents;
    let to = AgentId::new("worker").expect("id");
    // Intents stored before the park: delivered long ago by the shared lane.
    for i in 0..20 {
        js.publish("mesh.intent.planner.worker.work", format!("{i}").into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    setup::create_parked_consumer(stream, &cfg, &to, 15, &[], false)
        .await
        .expect("first park");
    setup::create_parked_consumer(stream, &cfg, &to, 18, &[], false)
        .await
        .expect("the park again");
    let info = stream
        .consumer_info(cfg.names.inbound_consumer(&to))
        .await
        .expect("parked consumer");
    assert_eq!(
        info.config.deliver_policy,
        DeliverPolicy::ByStartSequence { start_sequence: 15 },
        "the replacement starts at the first intent the replaced one had not acked"
    );
    assert_eq!(info.num_pending, 6, "intents 15..=20 waiting, none before");
}
