//! The harness against real nats-server processes: start, JetStream data across restart, stop,
//! kill, custom config, cleanup on drop, a three-node cluster with an R3 stream, and a leaf node
//! whose link to its hub is cut and restored.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use mesh_testkit::{nats_server_version, Cluster, HarnessError, LeafNode, NatsServer, Remote};

async fn connect(url: impl async_nats::ToServerAddrs) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .expect("connect to the harness server")
}

fn stream_config(name: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Publishes `count` messages to `<prefix>.<i>` and waits for each ack.
async fn publish(js: &jetstream::Context, prefix: &str, count: usize) {
    for i in 0..count {
        js.publish(format!("{prefix}.{i}"), format!("m{i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
}

async fn stored(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}

#[test]
fn reports_the_version_it_runs() {
    let version = nats_server_version().expect("nats-server version");
    assert!(version.starts_with("2."), "unexpected version {version}");
    // scripts/test and .ci/run select the release under test with MESH_NATS_VERSION.
    if let Ok(wanted) = std::env::var("MESH_NATS_VERSION") {
        assert_eq!(
            version, wanted,
            "MESH_NATS_VERSION asks for another release"
        );
    }
}

#[tokio::test]
async fn jetstream_data_survives_restart_stop_and_kill() {
    let server = NatsServer::start();
    let port = server.port();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));

    let js = jetstream::new(connect(server.url()).await);
    js.create_stream(stream_config("KEEP", 1))
        .await
        .expect("create stream");
    publish(&js, "keep", 3).await;

    server.restart();
    assert_eq!(server.port(), port);
    let js = jetstream::new(connect(server.url()).await);
    assert_eq!(stored(&js, "KEEP").await, 3);

    server.stop();
    assert!(!server.is_running());
    server.restart();
    let js = jetstream::new(connect(server.url()).await);
    publish(&js, "keep", 1).await;
    assert_eq!(stored(&js, "KEEP").await, 4);

    // Acked messages are written to the store files before the ack, so a SIGKILL keeps them.
    server.kill();
    assert!(!server.is_running());
    server.restart();
    let js = jetstream::new(connect(server.url()).await);
    assert_eq!(stored(&js, "KEEP").await, 4);
    let first = js
        .get_stream("KEEP")
        .await
        .expect("stream")
        .get_raw_message(1)
        .await
        .expect("message 1");
    assert_eq!(&first.payload[..], b"m0");
}

#[tokio::test]
async fn a_client_reconnects_after_restart() {
    let server = NatsServer::start();
    let client = connect(server.url()).await;
    let js = jetstream::new(client.clone());
    js.create_stream(stream_config("RECON", 1))
        .await
        .expect("create stream");

    server.restart();
    // The same client reconnects on its own to the same port. A publish that went out on the
    // dead connection is lost (core NATS is at most once), so retry with a message id, as an
    // application would; JetStream dedupes the retries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let ack = loop {
        let publish = js
            .send_publish(
                "recon.1",
                jetstream::message::PublishMessage::build()
                    .payload("after".into())
                    .message_id("recon-1"),
            )
            .await
            .expect("publish");
        match tokio::time::timeout(Duration::from_secs(1), publish).await {
            Ok(Ok(ack)) => break ack,
            _ if tokio::time::Instant::now() < deadline => continue,
            other => panic!("no ack within 15 s of the restart: {other:?}"),
        }
    };
    assert_eq!(ack.sequence, 1);
}

#[tokio::test]
async fn custom_config_is_applied() {
    let server = NatsServer::start_with_conf("max_payload: 2048\njetstream: enabled\n");
    let client = connect(server.url()).await;
    assert_eq!(client.server_info().max_payload, 2048);
    let js = jetstream::new(client);
    js.create_stream(stream_config("CONF", 1))
        .await
        .expect("JetStream is on");
}

#[test]
fn invalid_config_is_an_error_with_the_server_output() {
    let err = NatsServer::try_start_with_conf("this is { not a config").expect_err("must fail");
    match err {
        HarnessError::Exited { output, .. } => assert!(!output.trim().is_empty()),
        other => panic!("expected Exited, got {other:?}"),
    }
}

#[test]
fn drop_kills_the_server_and_deletes_its_store() {
    let server = NatsServer::start();
    let store = server.store_dir().to_owned();
    let pid = server.pid().expect("running");
    assert!(store.exists());
    drop(server);
    assert!(!store.exists(), "store dir {} left behind", store.display());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} still alive"
    );
}

#[test]
fn parallel_servers_get_their_own_ports() {
    let servers: Vec<NatsServer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(NatsServer::start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start thread"))
            .collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(NatsServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4);
}

#[tokio::test]
async fn cluster_runs_an_r3_stream_through_a_leader_restart() {
    let cluster = Cluster::start(3);
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.node(0).name(), "n1");

    let js = jetstream::new(connect(cluster.urls()).await);
    // The meta leader sees every peer as current before this point, but it may place an R3
    // stream only once the peers' server stats say they are online: that has no event to wait
    // for, so poll with a deadline (nats-server 2.11 answered "peer offline" once in CI).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut stream = loop {
        match js.create_stream(stream_config("RTHREE", 3)).await {
            Ok(s) => break s,
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.to_string().contains("peer offline") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create R3 stream: {e:?}"),
        }
    };
    let info = stream.info().await.expect("stream info");
    let replicas = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
    assert_eq!(replicas, 2, "an R3 stream has a leader and two replicas");
    publish(&js, "rthree", 3).await;

    // Take down the meta leader; the other two still hold a quorum. A graceful stop hands
    // leadership over at once; a kill would cost a Raft election timeout (seconds).
    let leader = cluster.wait_for_meta_leader();
    cluster.node(leader).stop();
    let next = cluster.wait_for_meta_leader();
    assert_ne!(next, leader);

    let js = jetstream::new(connect(cluster.node(next).url()).await);
    publish(&js, "rthree", 1).await;
    assert_eq!(stored(&js, "RTHREE").await, 4);

    cluster.node(leader).restart();
    cluster.wait_for_meta_leader();
    let js = jetstream::new(connect(cluster.node(leader).url()).await);
    assert_eq!(stored(&js, "RTHREE").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_reaches_the_hub_stream_until_its_link_is_cut_and_again_once_restored() {
    let hub = NatsServer::start_hub_with_conf("jetstream: enabled");
    let leaf = tokio::task::block_in_place(|| LeafNode::start(&hub, "", &[Remote::default()]));
    let hub_js = jetstream::new(connect(hub.url()).await);
    hub_js
        .create_stream(stream_config("REGION", 1))
        .await
        .expect("stream on the hub");
    // The leaf runs no JetStream: its client's publish is stored by the hub's stream.
    let local = connect(leaf.url()).await;
    let mut leaf_js = jetstream::new(local.clone());
    leaf_js.set_timeout(Duration::from_millis(500));
    publish(&leaf_js, "region", 3).await;
    assert_eq!(stored(&hub_js, "REGION").await, 3);

    tokio::task::block_in_place(|| leaf.cut_link());
    assert!(leaf.is_cut());
    let cut = leaf_js.publish("region.cut", "x".into()).await;
    let acked = match cut {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "a publish across a cut link was acknowledged");
    assert_eq!(
        local.connection_state(),
        async_nats::connection::State::Connected,
        "the leaf's own client stays connected through the cut"
    );

    tokio::task::block_in_place(|| leaf.restore_link());
    publish(&leaf_js, "region.back", 2).await;
    assert_eq!(stored(&hub_js, "REGION").await, 5);
}
