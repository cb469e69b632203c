//! Seeing a replica: `/metrics` counts what it delivers and fences, `/readyz` follows the
//! fail-closed state (503 while the kill state is not known, 200 once replayed), `/healthz`
//! answers while the process runs.

use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayProcess, GatewayTask};
use mesh_tests::http::{get, sample};
use mesh_tests::{eventually, init_tracing, operator, Mesh};

#[tokio::test]
async fn metrics_count_deliveries_and_fences() {
    init_tracing();
    let mesh = Mesh::start();
    let (gw, addr) = GatewayTask::start_observed(&mesh, "gw1").await;
    let client = mesh.operator().await;
    wait_live(&client, &["gw1"]).await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    for i in 0..5 {
        agents::send(&js, "A", "B", "deploy.service", format!("{i}"))
            .await
            .expect("publish");
    }
    rec.wait_for(5).await;
    operator::kill(&client, "C", "metrics test").await;

    // Counted just after the agent's reply, so the scrape may come first: wait for it.
    eventually("5 deliveries and a fence counted", || async {
        let Ok((200, text)) = get(addr, "/metrics").await else {
            return false;
        };
        sample(&text, "mesh_gateway_intents_delivered_total") == Some(5.0)
            && sample(&text, "mesh_gateway_fence_duration_seconds_count") >= Some(1.0)
    })
    .await;
    let (_, text) = get(addr, "/metrics").await.expect("scrape");
    for (series, want) in [
        ("mesh_gateway_delivery_duration_seconds_count", 5.0),
        ("mesh_gateway_deliveries_in_flight", 0.0),
        ("mesh_gateway_role{role=\"active\"}", 1.0),
        ("mesh_gateway_nats_connected", 1.0),
        ("mesh_gateway_kill_state_known", 1.0),
        ("mesh_gateway_ready", 1.0),
        ("mesh_gateway_agents_killed", 1.0),
        ("mesh_gateway_parked_recipients", 0.0),
        ("mesh_gateway_intents_pending", 0.0),
        ("mesh_gateway_intents_unacked", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    let sum = sample(&text, "mesh_gateway_delivery_duration_seconds_sum").expect("a sum");
    assert!(sum > 0.0, "delivery latency sum {sum}");
    assert!(
        text.contains("mesh_gateway_delivery_duration_seconds_bucket{le=\"+Inf\"} 5"),
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn readyz_follows_the_fail_closed_state() {
    init_tracing();
    let mesh = Mesh::start();
    let (gw, addr) = GatewayTask::start_observed(&mesh, "gw1").await;
    let status = |path: &'static str| async move { get(addr, path).await.map(|(s, _)| s).ok() };

    eventually(
        "ready once kill flags and policies are replayed",
        || async { status("/readyz").await == Some(200) },
    )
    .await;
    assert_eq!(status("/healthz").await, Some(200));

    // No NATS: the kill state cannot be known, the replica fails closed and says so.
    mesh.server.stop();
    eventually("not ready while failing closed", || async {
        matches!(get(addr, "/readyz").await, Ok((503, body)) if body.contains("kill state not known"))
    })
    .await;
    assert_eq!(status("/healthz").await, Some(200), "alive while not ready");
    let (_, text) = get(addr, "/metrics").await.expect("scrape");
    assert_eq!(sample(&text, "mesh_gateway_ready"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "mesh_gateway_nats_connected"),
        Some(0.0),
        "{text}"
    );

    // Back: ready again only once the flags are replayed.
    mesh.server.restart();
    eventually("ready again after the replay", || async {
        status("/readyz").await == Some(200)
    })
    .await;
    assert_eq!(status("/nope").await, Some(404));
    gw.stop().await;
}

/// The same as a real `mesh-gateway` process with `--metrics-addr`: ready, 503 while NATS is
/// gone (failing closed), ready again after the replay; a clean stop.
#[tokio::test]
async fn a_gateway_process_serves_its_probes() {
    init_tracing();
    let mesh = Mesh::start();
    let (mut gw, addr) = GatewayProcess::start_observed_in(&mesh, "gw1");
    let status = |path: &'static str| async move { get(addr, path).await.map(|(s, _)| s).ok() };
    eventually("process ready", || async {
        status("/readyz").await == Some(200)
    })
    .await;
    mesh.server.stop();
    eventually("process not ready while failing closed", || async {
        status("/readyz").await == Some(503)
    })
    .await;
    assert_eq!(status("/healthz").await, Some(200));
    mesh.server.restart();
    eventually("process ready again", || async {
        status("/readyz").await == Some(200)
    })
    .await;
    let (_, text) = get(addr, "/metrics").await.expect("scrape");
    assert_eq!(
        sample(&text, "mesh_gateway_kill_state_known"),
        Some(1.0),
        "{text}"
    );
    assert!(gw.terminate().success());
}
