//! Issue 10: what a single nats-server (R1) keeps of acknowledged intents and kill records
//! across a crash of its process (SIGKILL), with the default `sync_interval` (2 minutes) and
//! with `sync_interval: always`. A process crash loses nothing in either: what the server
//! wrote is in the OS page cache, which outlives the process. A host's power loss is another
//! matter (docs/GUARANTEES.md, "Durability"); a test cannot cut the power.

use async_nats::jetstream;
use futures::TryStreamExt;
use mesh_schemas::{decode, KillRecord, KillState};
use mesh_tests::agents;
use mesh_tests::cli::{finished, mesh_cli, shown};
use mesh_tests::gateways::cli_binary;
use mesh_tests::{connect, http, init_tracing, NatsServer};

/// Acknowledged intents written before the crash.
const INTENTS: usize = 300;
/// Agents killed before the crash.
const KILLED: [&str; 5] = ["k1", "k2", "k3", "k4", "k5"];

/// What the server reports as its sync policy, from `/varz`.
async fn sync_always(server: &NatsServer) -> bool {
    let addr = server
        .monitor_url()
        .trim_start_matches("http://")
        .parse()
        .expect("monitor address");
    let (status, body) = http::get(addr, "/varz").await.expect("varz");
    assert_eq!(status, 200, "{body}");
    let varz: serde_json::Value = serde_json::from_str(&body).expect("varz is JSON");
    varz["jetstream"]["config"]["sync_always"] == true
}

/// Writes the intents and kills on a server started with `conf`, SIGKILLs it, restarts it and
/// returns how many intents and kill records it still has.
async fn crash_and_count(conf: &str, always: bool) -> (u64, usize) {
    init_tracing();
    tokio::task::block_in_place(cli_binary);
    let server = NatsServer::start_with_conf(conf);
    assert_eq!(sync_always(&server).await, always, "the sync policy in use");
    let url = server.url();
    let js = jetstream::new(connect(&url).await);
    let cfg = mesh_gateway::GatewayConfig::default();
    mesh_gateway::setup::ensure_ready(&js, &cfg)
        .await
        .expect("mesh objects");
    for i in 0..INTENTS {
        agents::send_with(
            &js,
            "mesh.intent.a.b.work",
            async_nats::HeaderMap::new(),
            format!("{i}"),
        )
        .await
        .expect("intent acknowledged");
    }
    for agent in KILLED {
        let out = finished(mesh_cli(&url, &["kill", agent, "--reason", "durability"])).await;
        assert!(out.status.success(), "kill {agent}: {}", shown(&out));
    }

    tokio::task::block_in_place(|| {
        server.kill();
        server.restart();
    });
    let js = jetstream::new(connect(&url).await);
    let intents = js.get_stream("MESH_INTENTS").await.expect("intents stream");
    let subjects: Vec<(String, usize)> = intents
        .info_with_subjects("mesh.intent.a.b.>")
        .await
        .expect("stream info")
        .try_collect()
        .await
        .expect("subject counts");
    let stored: u64 = subjects.iter().map(|(_, n)| *n as u64).sum();
    let kills = js.get_key_value("mesh-kill").await.expect("kill bucket");
    let mut killed = 0;
    for agent in KILLED {
        if let Ok(Some(v)) = kills.get(agent).await {
            let rec: KillRecord = decode(&v).expect("a kill record");
            if rec.state == KillState::Killed {
                killed += 1;
            }
        }
    }
    tracing::info!(always, stored, killed, "after the crash");
    (stored, killed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_with_the_default_sync_keeps_everything_across_a_process_crash() {
    let (stored, killed) = crash_and_count("jetstream: enabled\n", false).await;
    assert_eq!((stored, killed), (INTENTS as u64, KILLED.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_with_sync_always_keeps_everything_across_a_process_crash() {
    let (stored, killed) = crash_and_count("jetstream { sync_interval: always }\n", true).await;
    assert_eq!((stored, killed), (INTENTS as u64, KILLED.len()));
}
