//! Replay after resume (issue 9): the held work of many recipients from many senders, resumed
//! at once, is delivered in full and in order per (sender, recipient).
//!
//! The stall this guards against: a drain (and the shared lane) kept its deliveries as futures
//! of its own task and, between polls of them, awaited sends on the same NATS connection
//! (progress acks, consumer info, rejections). async-nats queues every command in one bounded
//! channel whose free slots go to waiting senders first come, first served; a slot granted to a
//! delivery that its task was not polling stayed taken. With more deliveries waiting than the
//! channel has slots, every slot ended up granted to a future nobody polled, and the connection
//! went silent: no delivery, no presence refresh, no kill-flag check, for good.

use std::time::Duration;

use futures::future::join_all;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::{connect, init_tracing, operator, NatsServer};

const RECIPIENTS: usize = 8;
const SENDERS: usize = 8;
const EACH: usize = 100;

/// A gateway whose connection has a command channel of 16 slots (async-nats' default is
/// 2,048) meets 64 (sender, recipient) deliveries at once: the shape of the benchmark's replay
/// of 100,000 intents (100 × 100 pairs), at a size the suite affords. Before the fix it went
/// silent within seconds of the resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_many_recipients_at_once_delivers_all_their_held_work_in_order() {
    init_tracing();
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::ConnectOptions::new()
        .client_capacity(16)
        .connect(&url)
        .await
        .expect("connect the gateway");
    // Progress acks every 333 ms: the drains send them while their deliveries wait.
    let gw = GatewayTask::start_on(client, &url, "gw1", |cfg| {
        cfg.ack_wait = Duration::from_secs(1);
    });
    let op = connect(&url).await;
    wait_live(&op, &["gw1"]).await;

    let agents_client = connect(&url).await;
    let mut recorders = Vec::new();
    let mut inboxes = Vec::new();
    for r in 0..RECIPIENTS {
        let rec = Recorder::default();
        let to = format!("r{r}");
        // A little work per delivery keeps the deliveries of all senders in flight together.
        let inbox = agents::serve_slowly(
            &agents_client,
            &to,
            &format!("{to}-1"),
            rec.clone(),
            true,
            Duration::ZERO,
        )
        .await;
        recorders.push(rec);
        inboxes.push(inbox);
    }
    for r in 0..RECIPIENTS {
        operator::kill(&op, &format!("r{r}"), "held for a replay").await;
    }

    let js = async_nats::jetstream::new(connect(&url).await);
    join_all((0..SENDERS).flat_map(|s| {
        let js = js.clone();
        (0..RECIPIENTS).map(move |r| {
            let js = js.clone();
            async move {
                let (from, to) = (format!("s{s}"), format!("r{r}"));
                for i in 0..EACH {
                    agents::send(&js, &from, &to, "work", i.to_string())
                        .await
                        .expect("intent stored");
                }
            }
        })
    }))
    .await;
    for rec in &recorders {
        assert!(rec.is_empty(), "a killed recipient received work");
    }

    join_all((0..RECIPIENTS).map(|r| {
        let op = op.clone();
        async move { operator::resume(&op, &format!("r{r}")).await }
    }))
    .await;
    for (r, rec) in recorders.iter().enumerate() {
        for s in 0..SENDERS {
            let from = format!("s{s}");
            rec.wait_unique(&from, EACH).await;
            rec.assert_in_order(&from, EACH);
        }
        assert!(
            rec.len() >= SENDERS * EACH,
            "r{r} received {} of {}",
            rec.len(),
            SENDERS * EACH
        );
    }
    gw.stop().await;
    for inbox in inboxes {
        inbox.abort();
    }
}
