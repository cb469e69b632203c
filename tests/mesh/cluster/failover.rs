//! Issue 10: a gateway given every node's URL, as a deployment would, loses the node it is
//! connected to. It reconnects to another node and keeps delivering, and a kill issued right
//! after the node died completes its fence: confirmed by that gateway, and enforced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_testkit::Cluster;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::cli::{finished, mesh_cli, shown};
use mesh_tests::gateways::{cli_binary, wait_live, GatewayProcess};
use mesh_tests::node_loss::flood;
use mesh_tests::{connect, eventually, http, init_tracing};

/// The NATS connection name of gateway `gw1`.
const GW1: &str = "mesh-gateway gw1";

/// The index of the node where a client named `name` is connected, read from each node's
/// `/connz`.
async fn node_serving(cluster: &Cluster, name: &str) -> Option<usize> {
    for (i, node) in cluster.nodes().iter().enumerate() {
        let addr = node
            .monitor_url()
            .trim_start_matches("http://")
            .parse()
            .expect("monitor address");
        let Ok((200, body)) = http::get(addr, "/connz?limit=1024").await else {
            continue;
        };
        let connz: serde_json::Value = serde_json::from_str(&body).expect("connz is JSON");
        let here = connz["connections"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == name));
        if here {
            return Some(i);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_given_every_url_survives_the_loss_of_its_node_and_confirms_a_kill() {
    init_tracing();
    tokio::task::block_in_place(cli_binary);
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let all = urls.join(",");
    let mut gw = GatewayProcess::start_with(&all, "gw1", &[("MESH_REPLICAS", "3")]);
    eventually("gw1 connected to a node", || async {
        node_serving(&cluster, GW1).await.is_some()
    })
    .await;
    let dead = node_serving(&cluster, GW1).await.expect("gw1's node");
    let other = (dead + 1) % 3;
    let here = connect(&urls[other]).await;
    wait_live(&here, &["gw1"]).await;

    let b = Recorder::default();
    let v = Recorder::default();
    let _b = agents::serve(&connect(&urls[other]).await, "B", "b1", b.clone(), true).await;
    let _v = agents::serve(&connect(&urls[other]).await, "V", "v1", v.clone(), true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(10);
    let to_b = flood(connect(&urls[other]).await, "A", "B", every, stop.clone());
    let to_v = flood(connect(&urls[other]).await, "A", "V", every, stop.clone());
    b.wait_unique("A", 50).await;
    v.wait_unique("A", 50).await;

    tokio::task::block_in_place(|| cluster.node(dead).kill());
    let out = finished(mesh_cli(
        &all,
        &[
            "kill",
            "V",
            "--reason",
            "failover",
            "--timeout",
            "20s",
            "--json",
        ],
    ))
    .await;
    let v_at_return = v.len();
    let version = mesh_testkit::nats_server_version().unwrap_or_default();
    if out.status.code() == Some(3) && !mesh_tests::node_loss::order_asserted_on(&version) {
        // nats-server 2.11 (GUARANTEES limit 12): a kill right after the node loss can go
        // unconfirmed by the reconnecting replica; the flag is in force (exit 3 says so).
        tracing::warn!(%version, "kill not confirmed after the node loss on 2.11 (limit 12)");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "kill: {}", shown(&out));
    let outcome: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", shown(&out)));
    assert_eq!(
        outcome["replicas"]["confirmed"],
        serde_json::json!(["gw1"]),
        "gw1 itself confirmed: {}",
        shown(&out)
    );

    // Reconnected elsewhere: it delivers again, from another node.
    let before = b.payloads_from("A").len();
    b.wait_unique("A", before + 50).await;
    let now = node_serving(&cluster, GW1).await;
    assert!(
        now.is_some_and(|n| n != dead),
        "gw1 connected to node {now:?}, lost node {dead}"
    );
    assert!(gw.exited().is_none(), "gw1 exited");
    stop.store(true, Ordering::SeqCst);
    let sent = to_b.await.expect("flood");
    let _ = to_v.await;
    b.wait_unique("A", sent).await;
    b.assert_in_order("A", sent);
    assert_eq!(
        v.len(),
        v_at_return,
        "V got intents after its kill returned"
    );
}
