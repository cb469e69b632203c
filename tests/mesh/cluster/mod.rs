//! A three-node JetStream cluster losing nodes under a gateway: the kill watch, presence, and
//! starting and killing while the cluster elects. Each gateway gets one node's URL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::StreamExt;
use mesh_schemas::{decode, encode, FenceAck, KillRecord};
use mesh_testkit::Cluster;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::{connect, init_tracing};

mod node_loss;
mod quorum;

/// Gateway settings for R3.
fn r3(cfg: &mut mesh_gateway::GatewayConfig) {
    cfg.replicas = 3;
}

/// The index of the node that leads `stream`.
async fn leader_of(js: &jetstream::Context, stream: &str) -> usize {
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let info = s.info().await.expect("stream info");
    let name = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("stream has a leader");
    name.trim_start_matches('n')
        .parse::<usize>()
        .expect("node name n<i>")
        - 1
}

/// Sends intents `<from> → <to>` with ids `<from>-<i>` every `every` until `stop`, retrying each
/// until JetStream stores it; returns how many were stored.
fn flood(
    client: async_nats::Client,
    from: &'static str,
    to: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let js = jetstream::new(client);
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let id = format!("{from}-{i}");
            loop {
                if stop.load(Ordering::SeqCst) {
                    return i;
                }
                let mut h = HeaderMap::new();
                h.insert("Nats-Msg-Id", id.as_str());
                let subject = format!("mesh.intent.{from}.{to}.work");
                if agents::send_with(&js, &subject, h, format!("{i}"))
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            i += 1;
            tokio::time::sleep(every).await;
        }
        i
    })
}

/// Writes a kill flag, retrying the write until it is stored; returns its revision and the
/// subscription to the fence acks, made before the write.
async fn write_kill(client: &async_nats::Client, agent: &str) -> (u64, async_nats::Subscriber) {
    // Short request timeouts: the flag lands as soon as the bucket has a leader again.
    let js = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(client.clone());
    let acks = client
        .subscribe(format!("mesh.gw.fenced.{agent}"))
        .await
        .expect("subscribe fence acks");
    let record = encode(&KillRecord::killed("node loss test", "test")).expect("encode");
    let started = std::time::Instant::now();
    let revision = loop {
        assert!(
            started.elapsed() < mesh_tests::DEADLINE,
            "the kill flag of {agent} could not be written within {:?}: mesh-kill has no leader",
            mesh_tests::DEADLINE
        );
        let put = async {
            let kv = js
                .get_key_value("mesh-kill")
                .await
                .map_err(|e| e.to_string())?;
            kv.put(agent, record.clone().into())
                .await
                .map_err(|e| e.to_string())
        };
        match put.await {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    (revision, acks)
}

/// Waits up to `timeout` for `gateway`'s confirmation of `revision`; returns whether it came.
async fn confirmed_by(
    acks: &mut async_nats::Subscriber,
    gateway: &str,
    revision: u64,
    timeout: Duration,
) -> bool {
    let confirmed = tokio::time::timeout(timeout, async {
        while let Some(msg) = acks.next().await {
            if let Ok(ack) = decode::<FenceAck>(&msg.payload) {
                if ack.gateway == gateway && ack.revision >= revision {
                    return true;
                }
            }
        }
        false
    })
    .await;
    confirmed.unwrap_or(false)
}

/// What a replica did around a kill: whether it confirmed within the fence time, and the
/// deliveries to the killed agent at points after the write.
struct KillSeen {
    confirmed: bool,
    /// 1.5 s after the write: a replica whose watch froze has failed closed by then (its
    /// checks run every 250 ms and judge within two).
    settled: usize,
    /// When the fence wait ended (confirmation or `timeout`).
    at_return: usize,
    /// 2 s after that.
    after: usize,
}

/// Waits for `gateway`'s confirmation of `revision` (up to `timeout`, at least 1.5 s) and
/// records the deliveries to `rec` meanwhile and for 2 s after.
async fn observe_kill(
    acks: &mut async_nats::Subscriber,
    gateway: &str,
    revision: u64,
    timeout: Duration,
    rec: &Recorder,
) -> KillSeen {
    let written = tokio::time::Instant::now();
    let confirm = confirmed_by(acks, gateway, revision, timeout);
    let settle = async {
        tokio::time::sleep_until(written + Duration::from_millis(1500)).await;
        rec.len()
    };
    let (confirmed, settled) = tokio::join!(confirm, settle);
    let at_return = rec.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = KillSeen {
        confirmed,
        settled,
        at_return,
        after: rec.len(),
    };
    tracing::info!(
        confirmed,
        settled,
        at_return,
        after = seen.after,
        "kill observed"
    );
    seen
}

impl KillSeen {
    /// The replica applied the kill, or stopped delivering; and nothing reached the agent
    /// after the kill returned.
    fn assert_safe(&self) {
        assert!(
            self.confirmed || self.at_return == self.settled,
            "the replica neither confirmed the kill nor stopped delivering: {} deliveries \
             to the killed agent in the last part of the fence",
            self.at_return - self.settled
        );
        assert_eq!(
            self.after, self.at_return,
            "deliveries to the killed agent after the kill returned (confirmed: {})",
            self.confirmed
        );
    }
}

/// Issue 13, point 1: the gateway's node, which also leads `mesh-kill`, is SIGKILLed along with
/// a second node; when the cluster has a quorum again, a kill is written. The replica either
/// applies it (confirms) or delivers nothing: never goes on delivering to the killed agent.
///
/// Run by hand (`--ignored`): once, on a machine with a load of 5 on 2 cores, `KV_mesh-kill`
/// stayed without a leader ("NO quorum, stalled" in n1's log) for over ten minutes after the
/// second node came back, with two of three nodes up, so the kill could never be written. Until
/// that is understood this test does not gate CI; the two tests above cover the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "2 of 3 nodes lost at once: KV_mesh-kill once stayed leaderless for 10+ min; run by hand"]
async fn a_replica_that_loses_its_node_and_the_kill_bucket_leader_never_delivers_past_a_kill() {
    init_tracing();
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let setup = connect(&urls[0]).await;
    let js = jetstream::new(setup.clone());
    let mut cfg = mesh_gateway::GatewayConfig::default();
    r3(&mut cfg);
    mesh_gateway::setup::ensure_ready(&js, &cfg)
        .await
        .expect("mesh objects");
    let lost = leader_of(&js, "KV_mesh-kill").await;
    let other = (lost + 1) % 3;
    let kept = (lost + 2) % 3;

    let gw = GatewayTask::start(&urls[lost], "gw1", r3).await;
    let client = connect(&urls[kept]).await;
    wait_live(&client, &["gw1"]).await;
    let victim = Recorder::default();
    let _v = agents::serve(
        &connect(&urls[kept]).await,
        "victim",
        "v1",
        victim.clone(),
        true,
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = flood(
        connect(&urls[kept]).await,
        "sender",
        "victim",
        Duration::from_millis(20),
        stop.clone(),
    );
    victim.wait_for(20).await;

    tokio::task::block_in_place(|| {
        cluster.node(lost).kill();
        cluster.node(other).kill();
    });
    // The outage itself, not a wait for an event.
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| cluster.node(other).restart());

    let (revision, mut acks) = write_kill(&client, "victim").await;
    let seen = observe_kill(&mut acks, "gw1", revision, Duration::from_secs(5), &victim).await;
    stop.store(true, Ordering::SeqCst);
    seen.assert_safe();
    let _ = sender.await;
    drop(gw);
}

/// The node that runs the ordered consumer of the one gateway's watch of `bucket`: the only
/// ephemeral consumer with a subscriber on its deliver subject.
async fn watch_consumer_host(js: &jetstream::Context, bucket: &str) -> usize {
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .expect("bucket stream");
    // A watch that is being restarted (its replica was listed again after a slow presence
    // write) has no consumer for a moment: look again until there is exactly one.
    let start = std::time::Instant::now();
    loop {
        let mut infos = stream.consumers();
        let mut hosts = Vec::new();
        while let Some(info) = infos.next().await {
            let info = info.expect("consumer info");
            // A stopped gateway's watch consumer lingers until its inactivity threshold.
            if info.config.durable_name.is_none() && info.push_bound {
                let leader = info
                    .cluster
                    .as_ref()
                    .and_then(|c| c.leader.clone())
                    .expect("consumer has a leader");
                hosts.push(
                    leader
                        .trim_start_matches('n')
                        .parse::<usize>()
                        .expect("n<i>")
                        - 1,
                );
            }
        }
        if hosts.len() == 1 {
            return hosts[0];
        }
        assert!(
            start.elapsed() < mesh_tests::DEADLINE,
            "one watch consumer on {bucket}: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 13, point 1, without a reconnect: the node running the watch's consumer is SIGKILLed
/// while the gateway stays connected to another node. async-nats notices only after two missed
/// idle heartbeats (10 s) and says nothing meanwhile; a kill written in that time must be applied
/// or the replica must stop delivering.
///
/// Run by hand (`--ignored`): its setup needs the server to place the watch's consumer on
/// another node than the gateway's, and in a CI run it placed it on the gateway's node in all
/// three tries ("a watch consumer off the gateway's node"), so it does not gate CI until the
/// setup forces the placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the server to place the watch consumer off the gateway's node; run by hand"]
async fn a_replica_whose_watch_consumer_is_lost_never_delivers_past_a_kill() {
    init_tracing();
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let setup = connect(&urls[0]).await;
    let js = jetstream::new(setup.clone());
    let mut cfg = mesh_gateway::GatewayConfig::default();
    r3(&mut cfg);
    mesh_gateway::setup::ensure_ready(&js, &cfg)
        .await
        .expect("mesh objects");

    // The watch's consumer is placed by the server: start the gateway on each node in turn
    // until it runs on another node than the gateway's, so that only the consumer is lost.
    let mut placed = None;
    for (node, url) in urls.iter().enumerate() {
        let gw = GatewayTask::start(url, "gw1", r3).await;
        let client = connect(url).await;
        wait_live(&client, &["gw1"]).await;
        let host = watch_consumer_host(&js, "mesh-kill").await;
        if host != node {
            placed = Some((gw, client, url.clone()));
            break;
        }
        gw.stop().await;
    }
    let (gw, client, urls_kept) = placed.expect("a watch consumer off the gateway's node");
    let host = watch_consumer_host(&js, "mesh-kill").await;
    let victim = Recorder::default();
    let _v = agents::serve(
        &connect(&urls_kept).await,
        "victim",
        "v1",
        victim.clone(),
        true,
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = flood(
        connect(&urls_kept).await,
        "sender",
        "victim",
        Duration::from_millis(20),
        stop.clone(),
    );
    victim.wait_for(20).await;

    tokio::task::block_in_place(|| cluster.node(host).kill());
    let (revision, mut acks) = write_kill(&client, "victim").await;
    let seen = observe_kill(&mut acks, "gw1", revision, Duration::from_secs(3), &victim).await;
    stop.store(true, Ordering::SeqCst);
    seen.assert_safe();
    let _ = sender.await;
    drop(gw);
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
