//! Parking and unparking: a recipient that cannot take its work (killed, unreachable,
//! backlogged) moves to a consumer of its own and back to the shared lane, and no intent is lost,
//! duplicated into the wrong order, or delivered while it is killed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{two_processes, wait_live, GatewayTask};
use mesh_tests::operator;
use mesh_tests::{eventually, init_tracing, registered, Mesh};

/// Waits until `counter` has grown by `more`.
async fn grown(counter: &Arc<AtomicUsize>, more: usize) {
    let target = counter.load(Ordering::SeqCst) + more;
    let c = counter.clone();
    eventually(&format!("{more} more intents published"), move || {
        let c = c.clone();
        async move { c.load(Ordering::SeqCst) >= target }
    })
    .await;
}

/// Whether `id` has no parked consumer (it is on the shared lane).
async fn unparked(js: &async_nats::jetstream::Context, id: &str) -> bool {
    let stream = js.get_stream("MESH_INTENTS").await.expect("stream");
    stream.consumer_info(format!("in_{id}")).await.is_err()
}

#[tokio::test]
async fn kill_and_resume_cycles_under_load_keep_order_and_lose_nothing() {
    let (mesh, [_g1, _g2], client) = two_processes().await;
    let js = async_nats::jetstream::new(client.clone());

    let (rec, _w1) = agents::serve_at(&mesh, &mesh.url(), "worker", "w1").await;
    let _w2 = agents::serve(
        &mesh.agent("worker").await,
        "worker",
        "w2",
        rec.clone(),
        true,
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (sent_a, sent_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let js_planner = async_nats::jetstream::new(mesh.agent("planner").await);
    let fa = agents::flood(
        js_planner.clone(),
        "planner",
        "worker",
        "work",
        stop.clone(),
        sent_a.clone(),
    );
    let fb = agents::flood(
        async_nats::jetstream::new(mesh.agent("ops").await),
        "ops",
        "worker",
        "work",
        stop.clone(),
        sent_b.clone(),
    );

    for round in 0..4 {
        grown(&sent_a, 150).await;
        operator::kill(&client, "worker", &format!("round {round}")).await;
        let at_kill = rec.len();
        grown(&sent_a, 150).await;
        assert_eq!(
            rec.len(),
            at_kill,
            "round {round}: a killed agent received intents"
        );
        operator::resume(&client, "worker").await;
    }
    grown(&sent_a, 150).await;
    stop.store(true, Ordering::SeqCst);
    fa.await.expect("planner flood");
    fb.await.expect("ops flood");
    let (na, nb) = (sent_a.load(Ordering::SeqCst), sent_b.load(Ordering::SeqCst));

    rec.wait_unique("planner", na).await;
    rec.wait_unique("ops", nb).await;
    rec.assert_in_order("planner", na);
    rec.assert_in_order("ops", nb);

    // Once the replay has caught up, the worker goes back to the shared lane, and what is sent
    // next still arrives in order after the rest.
    eventually("the worker is unparked", || {
        let js = js.clone();
        async move { unparked(&js, "worker").await }
    })
    .await;
    for i in na..na + 20 {
        agents::send(&js_planner, "planner", "worker", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    rec.wait_unique("planner", na + 20).await;
    rec.assert_in_order("planner", na + 20);
    assert!(
        unparked(&js, "worker").await,
        "a served agent stays unparked"
    );
}

#[tokio::test]
async fn an_agent_that_comes_back_is_replayed_in_order_then_unparked() {
    init_tracing();
    let mesh = Mesh::start();
    let gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let client = mesh.operator().await;
    wait_live(&client, &["gw1"]).await;
    let js = async_nats::jetstream::new(client.clone());
    let js_a = async_nats::jetstream::new(mesh.agent("A").await);

    // Nobody serves `late`: its first delivery finds no responder and it is parked.
    for i in 0..30 {
        agents::send(&js_a, "A", "late", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    eventually("late is parked", || {
        let js = js.clone();
        async move { !unparked(&js, "late").await }
    })
    .await;

    // It comes online while more intents keep coming.
    let rec = Recorder::default();
    let _l = agents::serve(&mesh.agent("late").await, "late", "l1", rec.clone(), true).await;
    for i in 30..60 {
        agents::send(&js_a, "A", "late", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    rec.wait_unique("A", 60).await;
    rec.assert_in_order("A", 60);
    eventually("late is unparked", || {
        let js = js.clone();
        async move { unparked(&js, "late").await }
    })
    .await;
    for i in 60..70 {
        agents::send(&js_a, "A", "late", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    rec.wait_unique("A", 70).await;
    rec.assert_in_order("A", 70);
    let stream = js.get_stream("MESH_INTENTS").await.expect("stream");
    eventually("every intent acknowledged on the shared lane", || {
        let stream = stream.clone();
        async move {
            stream
                .consumer_info("mesh_deliver")
                .await
                .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
        }
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_backlogged_recipient_is_parked_and_the_others_keep_flowing() {
    slow_recipient_is_parked(|c| c.park_backlog = 10).await;
}

#[tokio::test]
async fn a_full_shared_lane_parks_its_largest_queue() {
    // Each recipient under park_backlog, but the lane's window is small: the slow recipient is
    // parked because it holds most of the window.
    slow_recipient_is_parked(|c| {
        c.park_backlog = 1_000;
        c.delivery_max_ack_pending = 30;
    })
    .await;
}

/// 100 intents to an agent that takes 20 ms each, then 300 to a fast one: the slow one is parked
/// (`tweak` says why), the fast one's intents do not wait for it, and both get everything in order.
async fn slow_recipient_is_parked(tweak: impl FnOnce(&mut mesh_gateway::GatewayConfig)) {
    init_tracing();
    let mesh = Mesh::start();
    let gw = GatewayTask::start_in(&mesh, "gw1", tweak).await;
    let client = mesh.operator().await;
    wait_live(&client, &["gw1"]).await;
    let js = async_nats::jetstream::new(client.clone());
    let js_a = async_nats::jetstream::new(mesh.agent("A").await);

    // A slow agent: it answers each intent after 20 ms of service time, like an agent doing
    // real work, so intents queue up for it faster than it takes them.
    let slow_client = mesh.agent("slow").await;
    let mut inbox = slow_client
        .queue_subscribe("mesh.agent.slow.inbox", "slow".to_string())
        .await
        .expect("subscribe");
    registered(&slow_client).await;
    let slow_got = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let got = slow_got.clone();
    let replier = slow_client.clone();
    let _slow = tokio::spawn(async move {
        while let Some(msg) = inbox.next().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
            got.lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&msg.payload).to_string());
            if let Some(r) = msg.reply {
                let _ = replier.publish(r, Bytes::new()).await;
            }
        }
    });
    let fast = Recorder::default();
    let _f = agents::serve(&mesh.agent("fast").await, "fast", "f1", fast.clone(), true).await;

    for i in 0..100 {
        agents::send(&js_a, "A", "slow", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    eventually("slow is parked", || {
        let js = js.clone();
        async move { !unparked(&js, "slow").await }
    })
    .await;
    for i in 0..300 {
        agents::send(&js_a, "A", "fast", "work", format!("{i}"))
            .await
            .expect("publish");
    }
    fast.wait_unique("A", 300).await;
    fast.assert_in_order("A", 300);
    let slow_done = slow_got.lock().expect("lock").len();
    assert!(
        slow_done < 100,
        "the fast agent's 300 intents did not wait for the slow agent's 100 (slow has {slow_done})"
    );
    eventually("the slow agent got all 100", || {
        let got = slow_got.clone();
        async move { got.lock().expect("lock").len() >= 100 }
    })
    .await;
    let got = slow_got.lock().expect("lock").clone();
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<String> = got.into_iter().filter(|p| seen.insert(p.clone())).collect();
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(
        firsts, want,
        "the slow agent's intents in order, none missing"
    );
    gw.stop().await;
}

#[tokio::test]
async fn resuming_many_agents_at_once_releases_every_one() {
    // Kills and resumes race with the shared lane parking the same agents: whatever the order,
    // no parked consumer may stay paused once its agent is resumed.
    init_tracing();
    let mesh = Mesh::start();
    let gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let client = mesh.operator().await;
    wait_live(&client, &["gw1"]).await;
    let js_src = async_nats::jetstream::new(mesh.agent("src").await);
    let ids: Vec<String> = (0..30).map(|i| format!("agent{i}")).collect();
    let rec = Recorder::default();
    let mut serving = Vec::new();
    for id in &ids {
        serving.push(agents::serve(&mesh.agent(id).await, id, "i1", rec.clone(), true).await);
    }
    futures::future::join_all(ids.iter().map(|id| operator::kill(&client, id, "hold"))).await;
    for round in 0..10 {
        for id in &ids {
            agents::send(&js_src, "src", id, "work", format!("{id}-{round}"))
                .await
                .expect("publish");
        }
    }
    assert!(rec.is_empty(), "killed agents received intents");
    futures::future::join_all(ids.iter().map(|id| operator::resume(&client, id))).await;
    // Distinct intents: delivery is at-least-once, and a redelivery (a replica that paused while
    // its presence lease or kill-watch check was late, on a loaded machine) must not count.
    rec.wait_unique("src", 300).await;
    for id in &ids {
        let got: Vec<String> = rec
            .all()
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.payload).to_string())
            .filter(|p| p.starts_with(&format!("{id}-")))
            .collect();
        let want: Vec<String> = (0..10).map(|r| format!("{id}-{r}")).collect();
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<String> = got.into_iter().filter(|p| seen.insert(p.clone())).collect();
        assert_eq!(firsts, want, "{id}: in order, none missing");
    }
    gw.stop().await;
}
