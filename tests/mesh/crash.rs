//! Crashes: a gateway SIGKILLed mid-stream and restarted, a nats-server restarted mid-stream.
//! Every published intent ends delivered, pending or rejected; a kill made before the crash
//! still holds after it.

use std::collections::HashSet;

use async_nats::HeaderMap;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayProcess};
use mesh_tests::{eventually, init_tracing, operator, Mesh};

/// Publishes until JetStream stores it, retrying through outages; the fixed `Nats-Msg-Id`
/// makes a retry of an intent that was in fact stored a no-op.
async fn publish_surely(
    js: &async_nats::jetstream::Context,
    subject: &str,
    id: &str,
    body: String,
) {
    loop {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", id);
        if agents::send_with(js, subject, h, body.clone())
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn gateway_sigkill_and_nats_restart_lose_nothing_and_keep_the_kill() {
    init_tracing();
    let mesh = Mesh::start();
    let mut g1 = GatewayProcess::start_in(&mesh, "gw1");
    let _g2 = GatewayProcess::start_in(&mesh, "gw2");
    let client = mesh.operator().await;
    wait_live(&client, &["gw1", "gw2"]).await;
    let js = async_nats::jetstream::new(client.clone());
    let js_a = async_nats::jetstream::new(mesh.agent("A").await);

    let to_b = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", to_b.clone(), true).await;
    let to_k = Recorder::default();
    let _k = agents::serve(&mesh.agent("K").await, "K", "k1", to_k.clone(), true).await;
    operator::kill(&client, "K", "held across crashes").await;

    const N: usize = 1500;
    for i in 0..N {
        if i == 500 {
            g1.kill(); // SIGKILL, no drain
        }
        if i == 800 {
            g1 = GatewayProcess::start_in(&mesh, "gw1");
        }
        if i == 1100 {
            mesh.server.restart();
        }
        publish_surely(
            &js_a,
            "mesh.intent.A.B.work",
            &format!("a-{i}"),
            format!("{i}"),
        )
        .await;
        if i % 100 == 0 {
            publish_surely(
                &js_a,
                "mesh.intent.A.K.work",
                &format!("k-{i}"),
                format!("{i}"),
            )
            .await;
        }
    }
    to_b.wait_unique("A", N).await;
    let got: HashSet<String> = to_b.payloads_from("A").into_iter().collect();
    let want: HashSet<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(got.len(), N, "unique intents delivered");
    assert_eq!(got, want, "every published intent was delivered");

    // The kill survived both crashes: nothing reached K, its 15 intents are pending.
    assert!(to_k.is_empty(), "a killed agent received {:?}", to_k.all());
    let stream = js.get_stream("MESH_INTENTS").await.expect("stream");
    let info = stream.consumer_info("in_K").await.expect("consumer");
    assert!(info.paused);
    assert_eq!(
        info.num_pending + info.num_ack_pending as u64,
        (N / 100) as u64
    );

    // And resume still delivers them.
    wait_live(&client, &["gw1", "gw2"]).await;
    operator::resume(&client, "K").await;
    to_k.wait_for(N / 100).await;
    eventually("K's consumer drained", || {
        let stream = stream.clone();
        async move {
            match stream.consumer_info("in_K").await {
                Ok(i) => i.num_pending == 0 && i.num_ack_pending == 0,
                Err(_) => true,
            }
        }
    })
    .await;
    drop(g1);
}
