//! A rate is the rate: with one, two or three gateway processes, while a parked recipient is
//! drained next to the shared lane, and across a failover of the active replica, an agent's
//! intents are delivered at the configured rate (within the burst), and no one second holds
//! more than `rate + burst` of them.
//!
//! Each test measures when the recipients received the sender's intents and checks the figures
//! against bounds that the configured rate implies: `n` deliveries spread over `span` seconds
//! satisfy `rate · span - burst <= n <= rate · span + burst`, with a little slack for the
//! request round trip.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use mesh_schemas::Policy;
use mesh_tests::gateways::{wait_live, GatewayProcess};
use mesh_tests::{agents, eventually, init_tracing, operator, Mesh};
use tokio::sync::watch;

const RATE: f64 = 20.0;
const BURST: usize = 5;

/// When each intent from `A` reached one of its recipients.
#[derive(Clone)]
struct Arrivals {
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    count: watch::Sender<usize>,
}

impl Arrivals {
    fn new() -> Self {
        Arrivals {
            log: Arc::new(Mutex::new(Vec::new())),
            count: watch::channel(0).0,
        }
    }

    /// Serves `agent`'s inbox, replying at once and noting the time of each intent from `A`.
    async fn serve(&self, mesh: &Mesh, agent: &str) -> tokio::task::JoinHandle<()> {
        let client = mesh.agent(agent).await;
        let mut sub = client
            .queue_subscribe(format!("mesh.agent.{agent}.inbox"), agent.to_string())
            .await
            .expect("subscribe inbox");
        mesh_tests::registered(&client).await;
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let h = msg.headers.clone().unwrap_or_default();
                if h.get("Mesh-From").map(|v| v.as_str()) == Some("A") {
                    let id = h
                        .get("Mesh-Intent-Id")
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default();
                    me.log.lock().expect("log").push((Instant::now(), id));
                    me.count.send_modify(|c| *c += 1);
                }
                if let Some(r) = msg.reply {
                    let _ = client.publish(r, Bytes::new()).await;
                }
            }
        })
    }

    /// Waits until `n` distinct intents arrived.
    async fn wait_unique(&self, n: usize) {
        let mut rx = self.count.subscribe();
        let log = self.log.clone();
        let unique = move || {
            let mut ids: Vec<String> = log
                .lock()
                .expect("log")
                .iter()
                .map(|(_, i)| i.clone())
                .collect();
            ids.sort();
            ids.dedup();
            ids.len()
        };
        let res = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if unique() >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(res.is_ok(), "{} of {n} intents arrived", unique());
    }

    fn times(&self) -> Vec<Instant> {
        let mut t: Vec<Instant> = self
            .log
            .lock()
            .expect("log")
            .iter()
            .map(|(t, _)| *t)
            .collect();
        t.sort();
        t
    }
}

/// The most deliveries in any one second.
fn busiest_second(times: &[Instant]) -> usize {
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Checks `times` (sorted) against the configured rate and burst; returns the delivered rate.
fn assert_rate(what: &str, times: &[Instant]) -> f64 {
    let n = times.len();
    assert!(n >= 2, "{what}: {n} deliveries");
    let span = (times[n - 1] - times[0]).as_secs_f64();
    let delivered = (n - 1) as f64 / span;
    let busiest = busiest_second(times);
    eprintln!(
        "{what}: {n} intents in {span:.2} s, delivered rate {delivered:.1}/s against {RATE}/s \
         burst {BURST}; busiest second {busiest}"
    );
    // Times are when the agent received each intent, not when the gateway took its token: a
    // delivery that took longer than the next one moves into the next one's second. With that
    // spread under one period (50 ms), one second of receipts spans at most one more token.
    assert!(
        busiest <= RATE as usize + BURST + 1,
        "{what}: {busiest} deliveries in one second, over rate + burst (+1 for delivery jitter)"
    );
    // Never faster than the rate allows: the first burst is free, then one per period.
    let fastest = (n as f64 - 1.0 - BURST as f64) / RATE;
    assert!(
        span >= fastest - 0.05,
        "{what}: {n} intents in {span:.2} s, faster than {RATE}/s + burst {BURST}"
    );
    // Not a fraction of the rate either: at most the burst short of `rate · span`, plus half
    // a second of slack for round trips (half the rate, as two replicas used to give, would
    // take twice as long).
    let slowest = (n as f64 + BURST as f64) / RATE + 0.5;
    assert!(
        span <= slowest,
        "{what}: {n} intents took {span:.2} s, slower than {RATE}/s (at most {slowest:.2} s)"
    );
    delivered
}

/// A mesh with `replicas` gateway processes (`gw1` started first, so it is the active one),
/// `A`'s rate set to 20/s burst 5, and an operator client.
async fn mesh_with(replicas: usize) -> (Mesh, Vec<GatewayProcess>, async_nats::Client) {
    let mesh = Mesh::start();
    let client = mesh.operator().await;
    let mut gws = vec![GatewayProcess::start_in(&mesh, "gw1")];
    wait_live(&client, &["gw1"]).await;
    for i in 2..=replicas {
        gws.push(GatewayProcess::start_in(&mesh, &format!("gw{i}")));
    }
    let ids: Vec<String> = (1..=replicas).map(|i| format!("gw{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    wait_live(&client, &ids).await;
    let policy = Policy {
        rate: Some("20/s".into()),
        burst: Some(BURST as u32),
        ..Default::default()
    };
    operator::set_policy(&client, "A", policy).await;
    (mesh, gws, client)
}

async fn send_many(
    js: &async_nats::jetstream::Context,
    to: &[&str],
    range: std::ops::Range<usize>,
) {
    for i in range {
        agents::send(js, "A", to[i % to.len()], "work", format!("{i}"))
            .await
            .expect("publish");
    }
}

async fn lane_only(replicas: usize) {
    init_tracing();
    let (mesh, _gws, _client) = mesh_with(replicas).await;
    let arrivals = Arrivals::new();
    let mut serving = Vec::new();
    for r in ["R0", "R1", "R2", "R3"] {
        serving.push(arrivals.serve(&mesh, r).await);
    }
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    send_many(&js, &["R0", "R1", "R2", "R3"], 0..100).await;
    arrivals.wait_unique(100).await;
    assert_rate(&format!("{replicas} replica(s)"), &arrivals.times());
}

#[tokio::test]
async fn the_configured_rate_is_delivered_with_one_replica() {
    lane_only(1).await;
}

#[tokio::test]
async fn the_configured_rate_is_delivered_with_two_replicas() {
    lane_only(2).await;
}

#[tokio::test]
async fn the_configured_rate_is_delivered_with_three_replicas() {
    lane_only(3).await;
}

/// `P` is parked with 40 intents of `A` waiting; then, at once, `P` comes back (a drain, on
/// whichever replica holds `in_P`'s pin, delivers them) and `A` sends 60 more to `R` (the
/// active replica's shared lane). Together they get the rate, not a share each.
#[tokio::test]
async fn the_rate_holds_as_configured_while_a_parked_recipient_is_drained() {
    init_tracing();
    let (mesh, _gws, client) = mesh_with(3).await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    send_many(&js, &["P"], 0..40).await;
    let ops = async_nats::jetstream::new(client.clone());
    eventually("P parked with its 40 intents", || {
        let ops = ops.clone();
        async move {
            let Ok(stream) = ops.get_stream("MESH_INTENTS").await else {
                return false;
            };
            match stream.consumer_info("in_P").await {
                Ok(info) => info.num_pending + info.num_ack_pending as u64 == 40,
                Err(_) => false,
            }
        }
    })
    .await;

    let arrivals = Arrivals::new();
    let _p = arrivals.serve(&mesh, "P").await;
    let _r = arrivals.serve(&mesh, "R").await;
    send_many(&js, &["R"], 40..100).await;
    arrivals.wait_unique(100).await;
    assert_rate("lane and a drain, three replicas", &arrivals.times());
}

/// The active replica stops in the middle; the next one goes on from the same bucket.
#[tokio::test]
async fn the_rate_holds_across_a_failover_of_the_active_replica() {
    init_tracing();
    let (mesh, mut gws, client) = mesh_with(3).await;
    let arrivals = Arrivals::new();
    let _r = arrivals.serve(&mesh, "R").await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    send_many(&js, &["R"], 0..100).await;
    // gw1 started alone, so it holds the shared lane's pin; a live replica keeps it.
    arrivals.wait_unique(30).await;
    let stopped = gws.remove(0);
    let mut stopped = stopped;
    assert!(stopped.terminate().success(), "gw1 drained cleanly");
    let handed_over = arrivals.times().len();
    wait_live(&client, &["gw2", "gw3"]).await;
    arrivals.wait_unique(100).await;

    let times = arrivals.times();
    let busiest = busiest_second(&times);
    assert!(
        busiest <= RATE as usize + BURST,
        "{busiest} deliveries in one second across the failover"
    );
    // Before and after the handover, each part runs at the rate.
    assert_rate("three replicas, before the failover", &times[..handed_over]);
    assert_rate("three replicas, after the failover", &times[handed_over..]);
}
