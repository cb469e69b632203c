//! Issue 13 point 3: a comma-separated URL list (even the same URL twice) connects, and the
//! client fails over to another node of the list when its node stops.

use std::time::Duration;

use async_nats::Event;
use mesh_auth::connect::{NatsConnection, Prepared};
use mesh_testkit::{Cluster, NatsServer};
use tokio::sync::mpsc;

use crate::{round_trip, TIMEOUT};

#[tokio::test]
async fn the_same_url_twice_connects() {
    let server = NatsServer::start();
    let url = server.url();
    let conn = NatsConnection::new(format!("{url},{url}"));
    let client = conn
        .connect("list-test", "_L", TIMEOUT)
        .await
        .expect("connects");
    round_trip(&client, "_L").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_three_nodes_fails_over() {
    let cluster = Cluster::start(3);
    // Spaces around the commas, as people write lists.
    let conn = NatsConnection::new(cluster.urls().join(" , "));
    let prepared = conn.prepare("list-test", "_L").expect("prepares");
    assert_eq!(prepared.servers.len(), 3);
    let (events_tx, mut events) = mpsc::channel(64);
    let options = prepared
        .options
        // Only the configured list: the failover below must come from it, not from the
        // cluster's gossip.
        .ignore_discovered_servers()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                tx.send(event).await.ok();
            }
        });
    let client = Prepared {
        options,
        ..prepared
    }
    .connect(TIMEOUT)
    .await
    .expect("connects");
    round_trip(&client, "_L").await;

    let first = client.server_info().server_name;
    let node = cluster
        .nodes()
        .iter()
        .position(|n| n.name() == first)
        .unwrap_or_else(|| panic!("connected to {first}, not a node of the cluster"));
    cluster.node(node).stop();

    let wait = async {
        let mut disconnected = false;
        while let Some(event) = events.recv().await {
            match event {
                Event::Disconnected => disconnected = true,
                Event::Connected if disconnected => return,
                _ => {}
            }
        }
        panic!("event stream ended before the client reconnected");
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("reconnected to another node within 20 s");
    let second = client.server_info().server_name;
    assert_ne!(second, first, "reconnected to the stopped node?");
    assert!(
        cluster
            .nodes()
            .iter()
            .any(|n| n.name() == second && n.is_running()),
        "reconnected to {second}"
    );
    round_trip(&client, "_L").await;
}
