//! Issue 13, the flood-and-kill scenario: three nodes, two `mesh-gateway` processes with
//! `--replicas 3` each given one node's URL, agents on the third node, intents flowing; the
//! node leading `MESH_INTENTS` is SIGKILLed and restarted 5 s later, and `mesh-cli kill` runs
//! during the outage (agent `v1`) and right after it (`v2`). Nothing may reach or leave a
//! killed agent after its kill returned, nothing may be lost, and the intents from one sender
//! to one recipient must arrive in order. The stream sequence of every intent is read back from
//! the stream at the end, so that an inversion says whether the stream or the mesh reordered.
//!
//! One run is part of the suite; `node_loss_loop` (ignored) runs `NODE_LOSS_RUNS` (20)
//! and prints the figures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures::StreamExt;
use mesh_testkit::Cluster;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{cli_binary, gateway_binary, wait_live, GatewayProcess};
use mesh_tests::{connect, init_tracing};

use super::leader_of;
use super::quorum::{finished, mesh_cli, shown};

/// Sends `<from> → <to>` intents with ids `<from>-<to>-<i>` and payload `i` every `every` until
/// `stop`, retrying each until JetStream stores it; returns how many were stored.
fn flood(
    client: async_nats::Client,
    from: &'static str,
    to: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let js = jetstream::new(client);
        let subject = format!("mesh.intent.{from}.{to}.work");
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let id = format!("{from}-{to}-{i}");
            loop {
                let mut h = HeaderMap::new();
                h.insert("Nats-Msg-Id", id.as_str());
                if agents::send_with(&js, &subject, h, format!("{i}"))
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            i += 1;
            tokio::time::sleep(every).await;
        }
        i
    })
}

/// One kill during the run.
#[derive(Debug)]
struct Kill {
    agent: &'static str,
    exit: Option<i32>,
    /// Deliveries to the agent, and from it to `builder`, when `kill` returned.
    to_at_return: usize,
    from_at_return: usize,
    /// The same at the end of the run.
    to_at_end: usize,
    from_at_end: usize,
    output: String,
}

impl Kill {
    fn after_return(&self) -> usize {
        (self.to_at_end - self.to_at_return) + (self.from_at_end - self.from_at_return)
    }
}

/// What one run saw.
#[derive(Debug, Default)]
struct Figures {
    /// Intents `sender → builder` stored.
    sent: usize,
    /// Of those, delivered (first deliveries) within 30 s of the end of the flood; the rest is
    /// "lost" in the figures (still in the stream, but not delivered in time).
    delivered: usize,
    /// Positions where a first delivery came before an earlier intent of the same sender.
    inversions: Vec<String>,
    kills: Vec<Kill>,
}

impl Figures {
    fn lost(&self) -> usize {
        self.sent.saturating_sub(self.delivered)
    }
    fn after_kill(&self) -> usize {
        self.kills.iter().map(Kill::after_return).sum()
    }
    /// Kills that exited 3 (a replica did not confirm) while deliveries went on.
    fn unconfirmed_delivering(&self) -> usize {
        self.kills
            .iter()
            .filter(|k| k.exit == Some(3) && k.after_return() > 0)
            .count()
    }
    fn summary(&self) -> String {
        let exits: Vec<String> = self
            .kills
            .iter()
            .map(|k| format!("{}:{:?}", k.agent, k.exit))
            .collect();
        format!(
            "sent {} delivered {} lost {} out-of-order {} after-kill {} unconfirmed-delivering {} kill exits [{}]",
            self.sent,
            self.delivered,
            self.lost(),
            self.inversions.len(),
            self.after_kill(),
            self.unconfirmed_delivering(),
            exits.join(" ")
        )
    }
    fn assert_kills_hold(&self) {
        let detail: Vec<&String> = self.kills.iter().map(|k| &k.output).collect();
        assert!(
            self.after_kill() == 0
                && self
                    .kills
                    .iter()
                    .all(|k| k.exit == Some(0) || k.exit == Some(3)),
            "{}; kills: {detail:?}",
            self.summary()
        );
    }
    fn assert_clean(&self) {
        let detail: Vec<&String> = self.kills.iter().map(|k| &k.output).collect();
        assert!(
            self.lost() == 0
                && self.inversions.is_empty()
                && self.after_kill() == 0
                && self
                    .kills
                    .iter()
                    .all(|k| k.exit == Some(0) || k.exit == Some(3)),
            "{}; inversions: {:?}; kills: {detail:?}",
            self.summary(),
            self.inversions
        );
    }
}

/// The stream sequences of each intent id on `subject_filter`, read back from `MESH_INTENTS`.
async fn stream_seqs(js: &jetstream::Context, filter: &str) -> HashMap<String, Vec<u64>> {
    let stream = js.get_stream("MESH_INTENTS").await.expect("intents stream");
    let mut reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            headers_only: true,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let total = reader.info().await.expect("consumer info").num_pending;
    let mut messages = reader.messages().await.expect("messages");
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..total {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stream read in time")
            .expect("a message")
            .expect("no error");
        let seq = msg.info().expect("metadata").stream_sequence;
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        seqs.entry(id).or_default().push(seq);
    }
    seqs
}

/// Distinct intents from `from` that `rec` got.
fn count_from(rec: &Recorder, from: &str) -> usize {
    rec.payloads_from(from).len()
}

async fn kill(urls: &str, agent: &'static str, victim: &Recorder, builder: &Recorder) -> Kill {
    let out = finished(mesh_cli(
        urls,
        &[
            "kill",
            agent,
            "--reason",
            "node loss run",
            "--timeout",
            "15s",
        ],
    ))
    .await;
    Kill {
        agent,
        exit: out.status.code(),
        to_at_return: victim.len(),
        from_at_return: count_from(builder, agent),
        to_at_end: 0,
        from_at_end: 0,
        output: shown(&out),
    }
}

/// One run of the scenario.
async fn run_once() -> Figures {
    tokio::task::block_in_place(|| {
        cli_binary();
        gateway_binary();
    });
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let all = urls.join(",");
    let setup = connect(&urls[0]).await;
    let js = jetstream::new(setup.clone());
    let cfg = mesh_gateway::GatewayConfig {
        replicas: 3,
        ..Default::default()
    };
    mesh_gateway::setup::ensure_ready(&js, &cfg)
        .await
        .expect("mesh objects");
    let lost = leader_of(&js, "MESH_INTENTS").await;
    let second = (lost + 1) % 3;
    let agents_node = (lost + 2) % 3;
    let r3 = [("MESH_REPLICAS", "3")];
    let _gw1 = GatewayProcess::start_with(&urls[lost], "gw1", &r3);
    let _gw2 = GatewayProcess::start_with(&urls[second], "gw2", &r3);
    let here = connect(&urls[agents_node]).await;
    wait_live(&here, &["gw1", "gw2"]).await;

    let builder = Recorder::default();
    let v1 = Recorder::default();
    let v2 = Recorder::default();
    let agent_url = &urls[agents_node];
    let _b = agents::serve(
        &connect(agent_url).await,
        "builder",
        "b1",
        builder.clone(),
        true,
    )
    .await;
    let _v1 = agents::serve(&connect(agent_url).await, "v1", "v1a", v1.clone(), true).await;
    let _v2 = agents::serve(&connect(agent_url).await, "v2", "v2a", v2.clone(), true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(5);
    let slow = Duration::from_millis(20);
    let main = flood(
        connect(agent_url).await,
        "sender",
        "builder",
        every,
        stop.clone(),
    );
    let mut others = Vec::new();
    for (from, to) in [
        ("sender", "v1"),
        ("sender", "v2"),
        ("v1", "builder"),
        ("v2", "builder"),
    ] {
        others.push(flood(
            connect(agent_url).await,
            from,
            to,
            slow,
            stop.clone(),
        ));
    }
    builder.wait_unique("sender", 300).await;

    tokio::task::block_in_place(|| cluster.node(lost).kill());
    let lost_at = tokio::time::Instant::now();
    let mut kills = vec![kill(&all, "v1", &v1, &builder).await];
    // The outage itself, not a wait for an event.
    tokio::time::sleep_until(lost_at + Duration::from_secs(5)).await;
    tokio::task::block_in_place(|| cluster.node(lost).restart());
    kills.push(kill(&all, "v2", &v2, &builder).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let sent = main.await.expect("flood");
    for f in others {
        let _ = f.await;
    }

    // Everything stored reaches builder: at most an ack wait and a pin timeout after the end.
    let mut counts = builder.count_watch();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while count_from(&builder, "sender") < sent {
            if counts.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    // Deliveries still in flight to or from a killed agent would show by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (k, rec) in kills.iter_mut().zip([&v1, &v2]) {
        k.to_at_end = rec.len();
        k.from_at_end = count_from(&builder, k.agent);
    }

    let got = builder.payloads_from("sender");
    let mut inversions = Vec::new();
    let broken: Vec<usize> = got
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0].parse::<u64>().ok() >= w[1].parse::<u64>().ok())
        .map(|(i, _)| i)
        .collect();
    if !broken.is_empty() {
        let seqs = stream_seqs(&js, "mesh.intent.sender.builder.>").await;
        for i in broken {
            let (a, b) = (&got[i], &got[i + 1]);
            let seq = |p: &str| seqs.get(&format!("sender-builder-{p}")).cloned();
            inversions.push(format!(
                "{a} (stream seqs {:?}) delivered before {b} (stream seqs {:?})",
                seq(a),
                seq(b)
            ));
        }
    }
    Figures {
        sent,
        delivered: got.len(),
        inversions,
        kills,
    }
}

/// The kill promises hold across the loss: nothing reaches or leaves a killed agent after
/// `kill` returned, and `kill` returns 0 or 3. Order and timely delivery across the loss of the
/// node leading `mesh_deliver` are known limit 11 (docs/GUARANTEES.md): they are logged here and
/// asserted by `node_loss_loop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_kill_across_the_loss_of_the_intents_leader() {
    init_tracing();
    let figures = run_once().await;
    tracing::info!(figures = %figures.summary(), "node loss run");
    if figures.lost() > 0 || !figures.inversions.is_empty() {
        tracing::warn!(inversions = ?figures.inversions, "limit 11 showed in this run");
    }
    figures.assert_kills_hold();
}

/// `NODE_LOSS_RUNS=20 cargo test -p mesh-tests --test mesh node_loss_loop -- --ignored
/// --nocapture`: the runs one after another, each line its figures, then the totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 30 s per run; run by hand"]
async fn node_loss_loop() {
    init_tracing();
    let runs: usize = std::env::var("NODE_LOSS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut all = Vec::new();
    for run in 1..=runs {
        let figures = run_once().await;
        println!("run {run:>2}: {}", figures.summary());
        for i in &figures.inversions {
            println!("        inversion: {i}");
        }
        for k in &figures.kills {
            if k.exit != Some(0) || k.after_return() > 0 {
                println!(
                    "        kill {}: to {}→{} from {}→{}; {}",
                    k.agent, k.to_at_return, k.to_at_end, k.from_at_return, k.from_at_end, k.output
                );
            }
        }
        all.push(figures);
    }
    let sum = |f: fn(&Figures) -> usize| all.iter().map(f).sum::<usize>();
    println!(
        "{runs} runs: sent {} delivered {} lost {} out-of-order {} after-kill {} \
         unconfirmed-delivering {} kills exit 0: {} exit 3: {} other: {}",
        sum(|f| f.sent),
        sum(|f| f.delivered),
        sum(Figures::lost),
        sum(|f| f.inversions.len()),
        sum(Figures::after_kill),
        sum(Figures::unconfirmed_delivering),
        sum(|f| f.kills.iter().filter(|k| k.exit == Some(0)).count()),
        sum(|f| f.kills.iter().filter(|k| k.exit == Some(3)).count()),
        sum(|f| f
            .kills
            .iter()
            .filter(|k| k.exit != Some(0) && k.exit != Some(3))
            .count()),
    );
    for f in &all {
        f.assert_clean();
    }
}
