//! Delivery: order per sender, acknowledgement, isolation of slow recipients, pending work.

use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::{init_tracing, Mesh};

#[tokio::test]
async fn intents_arrive_once_in_order_per_sender_with_delivery_headers() {
    arrive_once_in_order_per_sender(Mesh::start()).await;
}

/// The same in open mode (`mesh-cli up --insecure`): no credentials anywhere.
#[tokio::test]
async fn intents_arrive_once_in_order_per_sender_with_delivery_headers_in_open_mode() {
    arrive_once_in_order_per_sender(Mesh::insecure()).await;
}

async fn arrive_once_in_order_per_sender(mesh: Mesh) {
    init_tracing();
    let gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let operator = mesh.operator().await;
    wait_live(&operator, &["gw1"]).await;
    let js_a = async_nats::jetstream::new(mesh.agent("A").await);
    let js_c = async_nats::jetstream::new(mesh.agent("C").await);

    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    for i in 0..200 {
        let (js, from) = if i % 2 == 0 {
            (&js_a, "A")
        } else {
            (&js_c, "C")
        };
        agents::send(js, from, "B", "deploy.service", format!("{i}"))
            .await
            .expect("publish");
    }
    rec.wait_for(200).await;
    let want_a: Vec<String> = (0..200).step_by(2).map(|i| i.to_string()).collect();
    let want_c: Vec<String> = (1..200).step_by(2).map(|i| i.to_string()).collect();
    assert_eq!(rec.payloads_from("A"), want_a);
    assert_eq!(rec.payloads_from("C"), want_c);
    let first = &rec.all()[0];
    assert_eq!(first.action, "deploy.service");
    assert!(first.intent_id.len() > 4, "intent id set: {first:?}");
    assert_eq!(first.attempt, 1);

    // Every intent was acknowledged on the shared lane; B was never parked.
    let js = async_nats::jetstream::new(operator);
    let stream = js.get_stream("MESH_INTENTS").await.expect("stream");
    mesh_tests::eventually("all intents acked", || {
        let stream = stream.clone();
        async move {
            let info = stream
                .consumer_info("mesh_deliver")
                .await
                .expect("consumer info");
            info.num_pending == 0 && info.num_ack_pending == 0
        }
    })
    .await;
    assert!(
        stream.consumer_info("in_B").await.is_err(),
        "a recipient that answers is never parked"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_recipient_that_never_replies_does_not_slow_the_others() {
    init_tracing();
    let mesh = Mesh::start();
    let gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let operator = mesh.operator().await;
    wait_live(&operator, &["gw1"]).await;
    let js_a = async_nats::jetstream::new(mesh.agent("A").await);

    let silent = Recorder::default();
    let _s = agents::serve(
        &mesh.agent("slow").await,
        "slow",
        "s1",
        silent.clone(),
        false,
    )
    .await;
    let fast = Recorder::default();
    let _f = agents::serve(&mesh.agent("fast").await, "fast", "f1", fast.clone(), true).await;
    for i in 0..50 {
        agents::send(&js_a, "A", "slow", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    silent.wait_for(1).await;
    let started = std::time::Instant::now();
    for i in 0..500 {
        agents::send(&js_a, "A", "fast", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    fast.wait_for(500).await;
    // The silent agent holds every attempt for the full request timeout (500 ms); 500 intents
    // queued behind it would take minutes. Delivered well inside one timeout means isolated.
    let took = started.elapsed();
    assert_eq!(fast.payloads_from("A").len(), 500);
    assert!(
        took < std::time::Duration::from_secs(20),
        "fast agent took {took:?}"
    );
    // And the silent agent's intents are still pending, not dropped: parked on its own
    // consumer once a delivery timed out.
    let js = async_nats::jetstream::new(operator);
    let stream = js.get_stream("MESH_INTENTS").await.expect("stream");
    mesh_tests::eventually("the silent agent's 50 intents parked", || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info("in_slow")
                .await
                .is_ok_and(|i| i.num_pending + i.num_ack_pending as u64 == 50)
        }
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn an_intent_to_an_agent_nobody_serves_waits_until_one_does() {
    init_tracing();
    let mesh = Mesh::start();
    let gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let operator = mesh.operator().await;
    wait_live(&operator, &["gw1"]).await;
    let js_a = async_nats::jetstream::new(mesh.agent("A").await);
    for i in 0..20 {
        agents::send(&js_a, "A", "late", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    let js = async_nats::jetstream::new(operator);
    let stream = js.get_stream("MESH_INTENTS").await.expect("stream");
    mesh_tests::eventually("the gateway tried the late agent", || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info("in_late")
                .await
                .is_ok_and(|i| i.num_ack_pending > 0)
        }
    })
    .await;
    let rec = Recorder::default();
    let _l = agents::serve(&mesh.agent("late").await, "late", "l1", rec.clone(), true).await;
    rec.wait_for(20).await;
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(rec.payloads_from("A"), want);
    gw.stop().await;
}
