//! Issue 13, points 4 and 5: a cluster without a quorum. A gateway started then waits for
//! JetStream instead of exiting, and `mesh-cli kill` run then writes the flag as soon as the
//! cluster can take it, within its `--timeout`, instead of failing at the first timeout.

use std::time::Duration;

use async_nats::jetstream;
use mesh_testkit::Cluster;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::cli::{finished, mesh_cli, shown};
use mesh_tests::gateways::{cli_binary, gateway_binary, wait_live, GatewayProcess};
use mesh_tests::{connect, init_tracing, operator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_a_gateway_waits_and_kill_lands_once_the_cluster_is_back() {
    init_tracing();
    // Built (or found fresh) before the outage, so that both start during it.
    tokio::task::block_in_place(|| {
        cli_binary();
        gateway_binary();
    });
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let setup = connect(&urls[0]).await;
    let cfg = mesh_gateway::GatewayConfig {
        replicas: 3,
        ..Default::default()
    };
    mesh_gateway::setup::ensure_ready(&jetstream::new(setup.clone()), &cfg)
        .await
        .expect("mesh objects");

    // Two of three nodes down: no stream, bucket or meta leader can be elected.
    tokio::task::block_in_place(|| {
        cluster.node(1).kill();
        cluster.node(2).kill();
    });
    let mut gw = GatewayProcess::start_with(&urls[0], "gw1", &[("MESH_REPLICAS", "3")]);
    let all = urls.join(",");
    let kill = mesh_cli(
        &all,
        &[
            "kill",
            "victim",
            "--reason",
            "quorum test",
            "--timeout",
            "40s",
        ],
    );
    // The outage itself, not a wait for an event: long enough for a first attempt of each to
    // time out (a JetStream request times out after 5 s), which ended both before the fix.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        gw.exited(),
        None,
        "the gateway exited while the cluster had no quorum instead of waiting for it"
    );
    tokio::task::block_in_place(|| cluster.node(1).restart());

    let out = finished(kill).await;
    assert_eq!(out.status.code(), Some(0), "mesh-cli kill: {}", shown(&out));
    let client = connect(&urls[0]).await;
    let record = operator::kill_record(&client, "victim").await;
    assert!(
        record.is_some_and(|r| r.state == mesh_schemas::KillState::Killed),
        "the kill flag is written"
    );

    // The gateway started once the cluster was back, and enforces the kill. On nats-server
    // 2.11.11 its presence listing went unanswered for more than the test's 30 s after the
    // quorum came back in one CI run (GUARANTEES limit 12): asserted from 2.12 on.
    let version = client.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    if (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (2, 12) {
        tracing::warn!(%version, "the gateway's recovery is not asserted on this release");
        return;
    }
    wait_live(&client, &["gw1"]).await;
    assert_eq!(gw.exited(), None, "the gateway runs");
    let victim = Recorder::default();
    let other = Recorder::default();
    let _v = agents::serve(
        &connect(&urls[0]).await,
        "victim",
        "v1",
        victim.clone(),
        true,
    )
    .await;
    let _o = agents::serve(&connect(&urls[0]).await, "other", "o1", other.clone(), true).await;
    // The intents stream may still be electing its leader: publish until it is stored.
    let js = jetstream::new(connect(&urls[0]).await);
    for to in ["victim", "other"] {
        mesh_tests::eventually(&format!("an intent to {to} stored"), || {
            let js = js.clone();
            async move { agents::send(&js, "sender", to, "work", "0").await.is_ok() }
        })
        .await;
    }
    other.wait_for(1).await;
    assert!(victim.is_empty(), "a killed agent got an intent");
}
