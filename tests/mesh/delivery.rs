//! Delivery: order per sender, acknowledgement, isolation of slow recipients, pending work.

use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::{connect, init_tracing, NatsServer};

#[tokio::test]
async fn intents_arrive_once_in_order_per_sender_with_delivery_headers() {
    init_tracing();
    let server = NatsServer::start();
    let url = server.url();
    let gw = GatewayTask::start(&url, "gw1", |_| {}).await;
    let client = connect(&url).await;
    wait_live(&client, &["gw1"]).await;
    let js = async_nats::jetstream::new(client.clone());

    let rec = Recorder::default();
    let _b = agents::serve(&connect(&url).await, "B", "b1", rec.clone(), true).await;
    for i in 0..200 {
        let from = if i % 2 == 0 { "A" } else { "C" };
        agents::send(&js, from, "B", "deploy.service", format!("{i}"))
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
    let server = NatsServer::start();
    let url = server.url();
    let gw = GatewayTask::start(&url, "gw1", |_| {}).await;
    let client = connect(&url).await;
    wait_live(&client, &["gw1"]).await;
    let js = async_nats::jetstream::new(client.clone());

    let silent = Recorder::default();
    let _s = agents::serve(&connect(&url).await, "slow", "s1", silent.clone(), false).await;
    let fast = Recorder::default();
    let _f = agents::serve(&connect(&url).await, "fast", "f1", fast.clone(), true).await;
    for i in 0..50 {
        agents::send(&js, "A", "slow", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    silent.wait_for(1).await;
    let started = std::time::Instant::now();
    for i in 0..500 {
        agents::send(&js, "A", "fast", "work", format!("{i}"))
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
    let server = NatsServer::start();
    let url = server.url();
    let gw = GatewayTask::start(&url, "gw1", |_| {}).await;
    let client = connect(&url).await;
    wait_live(&client, &["gw1"]).await;
    let js = async_nats::jetstream::new(client.clone());
    for i in 0..20 {
        agents::send(&js, "A", "late", "work", format!("{i}"))
            .await
            .expect("publish");
    }
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
    let _l = agents::serve(&connect(&url).await, "late", "l1", rec.clone(), true).await;
    rec.wait_for(20).await;
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(rec.payloads_from("A"), want);
    gw.stop().await;
}
