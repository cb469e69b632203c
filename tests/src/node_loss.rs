//! Issue 13, the flood-and-kill scenario: three nodes, two `mesh-gateway` processes with
//! `--replicas 3` each given one node's URL, agents on the third node, intents flowing; the
//! node leading `MESH_INTENTS` is SIGKILLed and restarted 5 s later, and `mesh-cli kill` runs
//! during the outage (agent `v1`) and right after it (`v2`). Nothing may reach or leave a
//! killed agent after its kill returned, nothing may be lost, and the intents from one sender
//! to one recipient must arrive in order. The stream sequence of every intent is read back from
//! the stream at the end, so that an inversion says whether the stream or the mesh reordered.
//!
//! One run is part of the suite (`cluster::node_loss` in the `mesh` test binary); the
//! `node-loss-loop` binary runs it many times and prints the figures of each run
//! (`cargo run -p mesh-tests --bin node-loss-loop -- --runs 20`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures::StreamExt;
use mesh_testkit::Cluster;

use crate::agents::{self, Recorder};
use crate::cli::{finished, mesh_cli, shown};
use crate::connect;
use crate::gateways::{cli_binary, gateway_binary, wait_live, GatewayProcess};

/// The index of the node that leads `stream` (nodes are named `n1`, `n2`, …).
pub async fn leader_of(js: &jetstream::Context, stream: &str) -> usize {
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let info = s.info().await.expect("stream info");
    let name = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("stream has a leader");
    name.trim_start_matches('n')
        .parse::<usize>()
        .expect("node name n<i>")
        - 1
}

/// Creates the mesh's streams and buckets with three replicas each, through `client`.
pub async fn ready_r3(client: &async_nats::Client) -> jetstream::Context {
    let js = jetstream::new(client.clone());
    let cfg = mesh_gateway::GatewayConfig {
        replicas: 3,
        ..Default::default()
    };
    mesh_gateway::setup::ensure_ready(&js, &cfg)
        .await
        .expect("mesh objects");
    js
}

/// A three-node cluster with the mesh's streams and buckets at three replicas, created through
/// its first node; `mesh-cli` and `mesh-gateway` built first (if `cargo test` has not), so that
/// no build runs during a test's outage. Returns the cluster, its URLs and JetStream on node 1.
pub async fn r3_cluster() -> (Cluster, Vec<String>, jetstream::Context) {
    tokio::task::block_in_place(|| {
        cli_binary();
        gateway_binary();
    });
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let js = ready_r3(&connect(&urls[0]).await).await;
    (cluster, urls, js)
}

/// Sends `<from> → <to>` intents with ids `<from>-<to>-<i>` and payload `i` every `every` until
/// `stop`, retrying each until JetStream stores it; returns how many were stored.
pub fn flood(
    client: async_nats::Client,
    from: &'static str,
    to: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    flood_counted(client, from, to, every, stop, Arc::default())
}

/// [`flood`], counting every publish attempt (retries included) in `attempts`.
pub fn flood_counted(
    client: async_nats::Client,
    from: &'static str,
    to: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let js = jetstream::new(client);
        let subject = format!("mesh.intent.{from}.{to}.work");
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let id = format!("{from}-{to}-{i}");
            loop {
                attempts.fetch_add(1, Ordering::SeqCst);
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
pub struct Kill {
    pub agent: &'static str,
    pub exit: Option<i32>,
    /// Deliveries to the agent, and from it to `builder`, when `kill` returned.
    pub to_at_return: usize,
    pub from_at_return: usize,
    /// The same at the end of the run.
    pub to_at_end: usize,
    pub from_at_end: usize,
    pub output: String,
}

impl Kill {
    pub fn after_return(&self) -> usize {
        (self.to_at_end - self.to_at_return) + (self.from_at_end - self.from_at_return)
    }
}

/// What one run saw.
#[derive(Debug, Default)]
pub struct Figures {
    /// Intents `sender → builder` stored.
    pub sent: usize,
    /// Of those, delivered (first deliveries) within 30 s of the end of the flood; the rest is
    /// "lost" in the figures (still in the stream, but not delivered in time).
    pub delivered: usize,
    /// Positions where a first delivery came before an earlier intent of the same sender.
    pub inversions: Vec<String>,
    pub kills: Vec<Kill>,
    /// The nats-server release the run used.
    pub server: String,
}

impl Figures {
    pub fn lost(&self) -> usize {
        self.sent.saturating_sub(self.delivered)
    }
    pub fn after_kill(&self) -> usize {
        self.kills.iter().map(Kill::after_return).sum()
    }
    /// Kills that exited 3 (a replica did not confirm) while deliveries went on.
    pub fn unconfirmed_delivering(&self) -> usize {
        self.kills
            .iter()
            .filter(|k| k.exit == Some(3) && k.after_return() > 0)
            .count()
    }
    pub fn summary(&self) -> String {
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
    pub fn assert_kills_hold(&self) {
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
    pub fn clean(&self) -> bool {
        self.lost() == 0
            && self.inversions.is_empty()
            && self.after_kill() == 0
            && self
                .kills
                .iter()
                .all(|k| k.exit == Some(0) || k.exit == Some(3))
    }
}

/// The stream sequences of each intent id on `subject_filter`, read back from `MESH_INTENTS`.
pub async fn stream_seqs(js: &jetstream::Context, filter: &str) -> HashMap<String, Vec<u64>> {
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
pub async fn run_once() -> Figures {
    let (cluster, urls, js) = r3_cluster().await;
    let all = urls.join(",");
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
        server: here.server_info().version,
        sent,
        delivered: got.len(),
        inversions,
        kills,
    }
}

/// Whether order across a change of the shared consumer's leader is asserted on this
/// nats-server release. On 2.11 the step-down test still saw, in one run of three, one intent
/// delivered after a later one (limit 11 in docs/GUARANTEES.md), not yet understood; from 2.12 on
/// it is asserted.
pub fn order_asserted_on(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 12)
}
