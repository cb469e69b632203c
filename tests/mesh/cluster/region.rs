//! Issue 10: region B's leaf node linked to a three-node hub cluster, its remote listing every
//! hub node (as `deploy/nats/regions/leaf.conf` advises for a hub cluster). The hub node the
//! leaf is linked through dies while an agent served only from region B is killed and its work
//! held: the leaf links again through another node, nothing reaches the agent while it is
//! killed, and after the resume the held work arrives in region B in order, once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_testkit::{Cluster, LeafNode, Remote};
use mesh_tests::agents::{self, Recorder};
use mesh_tests::cli::{finished, mesh_cli, shown};
use mesh_tests::gateways::{cli_binary, wait_live, GatewayProcess};
use mesh_tests::node_loss::flood;
use mesh_tests::operator::held;
use mesh_tests::{connect, connect_any, eventually, init_tracing};

/// The hub node the leaf is linked through, if exactly one node reports its link.
fn linked_through(cluster: &Cluster) -> Option<usize> {
    let linked: Vec<usize> = (0..cluster.size())
        .filter(|i| cluster.node(*i).leaf_count().unwrap_or(0) > 0)
        .collect();
    match linked.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Runs `mesh-cli <args> --json` against every hub node; it must exit 0.
async fn cli(urls: &str, args: &[&str]) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = finished(mesh_cli(urls, &all)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "mesh-cli {args:?}: {}",
        shown(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_of_a_hub_cluster_links_through_another_node_and_its_held_work_arrives() {
    init_tracing();
    let (cluster, leaf) = tokio::task::block_in_place(|| {
        cli_binary();
        let cluster = Cluster::start_hub(3);
        let leaf = LeafNode::start_to_all(cluster.nodes(), "", &[Remote::default()]);
        (cluster, leaf)
    });
    let urls = cluster.urls();
    let all = urls.join(",");
    let _gw = GatewayProcess::start_with(&all, "gw1", &[("MESH_REPLICAS", "3")]);
    let op = connect_any(&urls).await;
    wait_live(&op, &["gw1"]).await;
    let dead = linked_through(&cluster).expect("the leaf is linked through one hub node");
    let other = (dead + 1) % 3;

    // Agent B runs in region B only; A sends from a hub node that stays up.
    let b = Recorder::default();
    let _b = agents::serve(&connect(&leaf.url()).await, "B", "b-leaf", b.clone(), true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let to_b = flood(
        connect(&urls[other]).await,
        "A",
        "B",
        Duration::from_millis(10),
        stop.clone(),
    );
    b.wait_unique("A", 50).await;

    cli(&all, &["kill", "B", "--reason", "leaf of a hub cluster"]).await;
    let at_kill = b.len();
    tokio::task::block_in_place(|| cluster.node(dead).kill());
    eventually("the leaf linked through another hub node", || {
        let (cluster, leaf) = (&cluster, &leaf);
        async move {
            leaf.server().leaf_count() == Some(1)
                && linked_through(cluster).is_some_and(|n| n != dead)
        }
    })
    .await;
    // Work keeps being stored for B while it is killed and its region's link has moved.
    eventually("100 intents held for B after the relink", || {
        let op = op.clone();
        async move { held(&op, "B").await >= 100 }
    })
    .await;
    tokio::task::block_in_place(|| {
        cluster.node(dead).restart();
        cluster.wait_for_meta_leader();
    });
    stop.store(true, Ordering::SeqCst);
    let sent = to_b.await.expect("flood");
    assert_eq!(b.len(), at_kill, "B received an intent while killed");

    cli(&all, &["resume", "B"]).await;
    b.wait_unique("A", sent).await;
    b.assert_in_order("A", sent);
    assert!(
        b.all().iter().all(|r| r.instance == "b-leaf"),
        "every delivery went to region B's instance"
    );
}
