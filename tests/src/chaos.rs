//! Issue 10, the chaos soak: a three-node cluster, two `mesh-gateway` processes with R3 streams
//! and buckets, six agents that serve their inboxes and send to each other at a steady rate,
//! and faults drawn from a seeded RNG at random intervals: gateway SIGKILL and restart, node
//! SIGKILL and restart (one node down at most, so the R3 quorum holds), `mesh-cli kill` and
//! `mesh-cli resume` of random agents, and harmless `mesh-cli policy set`s. At the end the
//! faults stop, everything is restarted and resumed, and the run is judged from what the agents
//! received, the stream and the audit trail ([`Report`]).
//!
//! The `chaos-soak` binary runs it for minutes
//! (`cargo run -p mesh-tests --bin chaos-soak -- --minutes 10 [--seed S]`); the suite runs it
//! for `AGENT_MESH_CHAOS_SECONDS` (`cluster::chaos` in the `mesh` test binary).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use mesh_schemas::AuditKind;
use mesh_testkit::Cluster;

use crate::agents::{self, Recorder, Rejections};
use crate::cli::{finished, mesh_cli, shown};
use crate::connect_any;
use crate::gateways::{cli_binary, gateway_binary, wait_live, GatewayProcess};
use crate::node_loss::{flood_counted, order_asserted_on, ready_r3, stream_seqs};
use crate::operator::audit_events;

/// The agents; each serves its inbox and sends.
const AGENTS: [&str; 6] = ["a1", "a2", "a3", "a4", "a5", "a6"];

/// The (sender, recipient) pairs that carry intents: a ring and two chords.
const PAIRS: [(&str, &str); 8] = [
    ("a1", "a2"),
    ("a2", "a3"),
    ("a3", "a4"),
    ("a4", "a5"),
    ("a5", "a6"),
    ("a6", "a1"),
    ("a1", "a4"),
    ("a3", "a6"),
];

/// The pause of each sender after each stored intent: about 25 intents a second per pair.
const EVERY: Duration = Duration::from_millis(40);

/// At most this many agents killed (or being killed) at once, so that traffic goes on.
const MAX_KILLED: usize = 2;

/// The kind of violation a first delivery before an older one of its pair is.
pub const ORDER: &str = "out-of-order";

/// The kind of violation a late first delivery is when the intent also has a `reject` record:
/// two replicas acted on it differently (one rejected it while its sender was killed, the other
/// delivered it after the resume; GUARANTEES limit 11).
pub const REJECTED_THEN_DELIVERED: &str = "rejected-then-delivered";

/// How long the end waits for every stored intent to be delivered or rejected.
const SETTLE: Duration = Duration::from_secs(120);

/// The kinds of fault, as printed.
pub const FAULT_KINDS: [&str; 7] = [
    "gateway-kill",
    "gateway-restart",
    "node-kill",
    "node-restart",
    "agent-kill",
    "agent-resume",
    "policy-set",
];

/// A small seeded generator (SplitMix64): the run's faults follow from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A duration between `lo` and `hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }
}

/// A seed from the clock, for runs that are not given one.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// One `mesh-cli` run of the soak.
#[derive(Debug, Clone)]
pub struct CliRun {
    pub what: String,
    pub exit: Option<i32>,
    pub started: Instant,
    pub returned: Instant,
    pub output: String,
}

/// Where an agent is in its kill/resume cycle.
enum AgentState {
    Active,
    Killing(tokio::task::JoinHandle<CliRun>),
    /// Killed; `confirmed` holds the return of a kill that exited 0.
    Killed {
        confirmed: Option<Instant>,
    },
    /// `mesh-cli resume` running: no new kill until it returns, so the flags do not cross.
    Resuming(tokio::task::JoinHandle<CliRun>),
}

/// A span in which nothing may reach or leave `agent`: from a kill that returned 0 until its
/// resume started.
#[derive(Debug, Clone)]
struct Window {
    agent: &'static str,
    from: Instant,
    until: Instant,
}

/// What one soak saw and how it judged it.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub server: String,
    pub ran_for: Duration,
    /// Publish attempts, retries included, and intents stored (PubAck).
    pub sent: usize,
    pub acked: usize,
    /// Stored intents delivered at least once (first deliveries), and the extra deliveries.
    pub delivered: usize,
    pub duplicates: usize,
    /// Stored intents neither delivered nor rejected at the end, but still in the stream.
    pub pending: usize,
    /// Their ids and stream sequences.
    pub pending_ids: Vec<String>,
    /// Stored intents rejected with a `reject` audit record; of those, delivered before too
    /// (a redelivery after a crash rejected because its sender was killed by then).
    pub rejected: usize,
    pub delivered_then_rejected: usize,
    pub faults: BTreeMap<&'static str, usize>,
    /// Every `mesh-cli` kill, resume and policy set, with exit and output.
    pub kills: Vec<CliRun>,
    pub resumes: Vec<CliRun>,
    pub policies: Vec<CliRun>,
    /// Violations by kind, each with its evidence.
    pub violations: BTreeMap<&'static str, Vec<String>>,
    /// Order inversions on a release where order is not asserted (limit 11).
    pub unasserted_inversions: Vec<String>,
    /// How long the end took until every stored intent was delivered or rejected.
    pub settled_in: Duration,
    /// Every fault with when it happened, for the evidence of a violation.
    pub log: Vec<(Instant, String)>,
    /// When the faults started.
    pub started: Option<Instant>,
}

fn exits(runs: &[CliRun], code: i32) -> usize {
    runs.iter().filter(|r| r.exit == Some(code)).count()
}

impl Report {
    pub fn violation_count(&self) -> usize {
        self.violations.values().map(Vec::len).sum()
    }

    /// The figures, several lines.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos soak: seed {} nats-server {} ran {:.0} s, settled in {:.1} s",
            self.seed,
            self.server,
            self.ran_for.as_secs_f64(),
            self.settled_in.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "intents: sent {} (publish attempts) acked {} delivered {} pending {} rejected {} \
             (of which delivered before {}) duplicates {}",
            self.sent,
            self.acked,
            self.delivered,
            self.pending,
            self.rejected,
            self.delivered_then_rejected,
            self.duplicates
        );
        if !self.pending_ids.is_empty() {
            let _ = writeln!(s, "  pending: {}", self.pending_ids.join(", "));
        }
        let faults: Vec<String> = FAULT_KINDS
            .iter()
            .map(|k| format!("{k} {}", self.faults.get(k).copied().unwrap_or(0)))
            .collect();
        let _ = writeln!(
            s,
            "faults: {} (the resumes at the end are not counted as faults)",
            faults.join(", ")
        );
        for (name, runs) in [
            ("kills", &self.kills),
            ("resumes", &self.resumes),
            ("policy sets", &self.policies),
        ] {
            let other = runs.len() - exits(runs, 0) - exits(runs, 3);
            let _ = writeln!(
                s,
                "{name}: {} (exit 0: {}, exit 3: {}, other: {other})",
                runs.len(),
                exits(runs, 0),
                exits(runs, 3)
            );
        }
        for k in self
            .kills
            .iter()
            .chain(&self.resumes)
            .chain(&self.policies)
            .filter(|k| k.exit != Some(0))
        {
            let _ = writeln!(
                s,
                "  {} at {:.1}: {}",
                k.what,
                self.secs(k.returned),
                k.output
            );
        }
        let by_kind: Vec<String> = self
            .violations
            .iter()
            .map(|(k, v)| format!("{k} {}", v.len()))
            .collect();
        let _ = writeln!(
            s,
            "violations: {} [{}]",
            self.violation_count(),
            by_kind.join(", ")
        );
        for (kind, list) in &self.violations {
            for v in list.iter().take(20) {
                let _ = writeln!(s, "  {kind}: {v}");
            }
        }
        if !self.unasserted_inversions.is_empty() {
            let _ = writeln!(
                s,
                "out of order, not asserted on {} (limit 11): {}",
                self.server,
                self.unasserted_inversions.len()
            );
        }
        s
    }

    /// Seconds since the faults started.
    fn secs(&self, at: Instant) -> f64 {
        self.started.map_or(0.0, |s| {
            at.saturating_duration_since(s).as_secs_f64()
                - s.saturating_duration_since(at).as_secs_f64()
        })
    }

    /// The faults in the `span` seconds before `at`.
    fn faults_before(&self, at: Instant, span: Duration) -> String {
        let near: Vec<String> = self
            .log
            .iter()
            .filter(|(t, _)| *t <= at && at.duration_since(*t) <= span)
            .map(|(t, what)| format!("{what} at {:.1}", self.secs(*t)))
            .collect();
        near.join(", ")
    }

    fn note(&mut self, what: String) {
        tracing::info!("chaos: {what}");
        self.log.push((Instant::now(), what));
    }

    fn violation(&mut self, kind: &'static str, what: String) {
        self.violations.entry(kind).or_default().push(what);
    }
}

/// The parts of the mesh that faults act on.
struct Rig {
    cluster: Cluster,
    urls: Vec<String>,
    all: String,
    gateways: Vec<(String, Option<GatewayProcess>)>,
}

const R3: [(&str, &str); 1] = [("MESH_REPLICAS", "3")];

impl Rig {
    fn gateway_url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    fn restart_gateway(&mut self, i: usize) {
        let url = self.gateway_url(i).to_string();
        let id = self.gateways[i].0.clone();
        self.gateways[i].1 = Some(GatewayProcess::start_with(&url, &id, &R3));
    }
}

/// Faults planned to end: a gateway or node to restart at a time.
#[derive(Default)]
struct Plans {
    gateway_restart: HashMap<usize, tokio::time::Instant>,
    node_down: Option<(usize, tokio::time::Instant)>,
    /// No node is killed before this (a restarted node first catches up).
    node_ok_after: Option<tokio::time::Instant>,
}

/// Runs the soak for `duration` with faults from `seed`.
pub async fn run(duration: Duration, seed: u64) -> Report {
    tokio::task::block_in_place(|| {
        cli_binary();
        gateway_binary();
    });
    let mut report = Report {
        seed,
        ..Report::default()
    };
    let mut rng = Rng::new(seed);
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let all = urls.join(",");
    let setup = connect_any(&urls).await;
    report.server = mesh_testkit::nats_server_version().expect("the nats-server version");
    let js = ready_r3(&setup).await;
    let mut rig = Rig {
        cluster,
        urls,
        all,
        gateways: vec![("gw1".into(), None), ("gw2".into(), None)],
    };
    for i in 0..rig.gateways.len() {
        rig.restart_gateway(i);
    }
    wait_live(&setup, &["gw1", "gw2"]).await;

    let mut recorders: HashMap<&'static str, Recorder> = HashMap::new();
    let mut notices: HashMap<&'static str, Rejections> = HashMap::new();
    let mut servers = Vec::new();
    for agent in AGENTS {
        let rec = Recorder::default();
        servers.push(
            agents::serve(
                &connect_any(&rig.urls).await,
                agent,
                agent,
                rec.clone(),
                true,
            )
            .await,
        );
        recorders.insert(agent, rec);
        notices.insert(agent, agents::rejections(&setup, agent).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut floods = Vec::new();
    for (from, to) in PAIRS {
        let client = connect_any(&rig.urls).await;
        floods.push((
            (from, to),
            flood_counted(client, from, to, EVERY, stop.clone(), attempts.clone()),
        ));
    }
    for (from, to) in PAIRS {
        recorders[to].wait_unique(from, 10).await;
    }

    let started = Instant::now();
    report.started = Some(started);
    let end = tokio::time::Instant::now() + duration;
    let mut states: HashMap<&'static str, AgentState> =
        AGENTS.iter().map(|a| (*a, AgentState::Active)).collect();
    let mut windows: Vec<Window> = Vec::new();
    let mut policy_runs: Vec<tokio::task::JoinHandle<CliRun>> = Vec::new();
    let mut plans = Plans::default();
    let mut next_fault = tokio::time::Instant::now() + rng.millis(1000, 3000);
    // Kinds not injected yet are chosen first, so that a short run has them all.
    let mut untried: Vec<&'static str> = FAULT_KINDS
        .iter()
        .copied()
        .filter(|k| !k.ends_with("-restart"))
        .collect();
    while tokio::time::Instant::now() < end {
        // The pace of the fault loop, not a wait for an event.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tokio::time::Instant::now();
        reap(&mut states, &mut report).await;
        end_outages(&mut rig, &mut plans, &mut report, now);
        if now < next_fault {
            continue;
        }
        next_fault = now + rng.millis(1500, 5000);
        let candidates: Vec<&'static str> = [
            "gateway-kill",
            "node-kill",
            "agent-kill",
            "agent-resume",
            "policy-set",
        ]
        .into_iter()
        .filter(|k| match *k {
            "gateway-kill" => rig.gateways.iter().any(|g| g.1.is_some()),
            "node-kill" => {
                plans.node_down.is_none() && plans.node_ok_after.is_none_or(|t| now >= t)
            }
            "agent-kill" => {
                let busy = states
                    .values()
                    .filter(|s| !matches!(s, AgentState::Active))
                    .count();
                busy < MAX_KILLED
            }
            "agent-resume" => states
                .values()
                .any(|s| matches!(s, AgentState::Killed { .. })),
            _ => true,
        })
        .collect();
        let preferred: Vec<&'static str> = candidates
            .iter()
            .copied()
            .filter(|k| untried.contains(k))
            .collect();
        let pool = if preferred.is_empty() {
            &candidates
        } else {
            &preferred
        };
        let kind = pool[rng.below(pool.len())];
        untried.retain(|k| *k != kind);
        *report.faults.entry(kind).or_default() += 1;
        match kind {
            "gateway-kill" => {
                let up: Vec<usize> = (0..rig.gateways.len())
                    .filter(|i| rig.gateways[*i].1.is_some())
                    .collect();
                let i = up[rng.below(up.len())];
                if let Some(mut gw) = rig.gateways[i].1.take() {
                    gw.kill();
                }
                plans.gateway_restart.insert(i, now + rng.millis(500, 6000));
                report.note(format!("{} SIGKILLed", rig.gateways[i].0));
            }
            "node-kill" => {
                let i = rng.below(rig.urls.len());
                tokio::task::block_in_place(|| rig.cluster.node(i).kill());
                plans.node_down = Some((i, now + rng.millis(2000, 10_000)));
                report.note(format!("node n{} SIGKILLed", i + 1));
            }
            "agent-kill" => {
                let active: Vec<&'static str> = AGENTS
                    .iter()
                    .copied()
                    .filter(|a| matches!(states[a], AgentState::Active))
                    .collect();
                let agent = active[rng.below(active.len())];
                report.note(format!("kill {agent} started"));
                let all = rig.all.clone();
                states.insert(
                    agent,
                    AgentState::Killing(tokio::spawn(cli_run(
                        all,
                        vec![
                            "kill".into(),
                            agent.into(),
                            "--reason".into(),
                            "chaos".into(),
                            "--timeout".into(),
                            "15s".into(),
                        ],
                    ))),
                );
            }
            "agent-resume" => {
                let killed: Vec<&'static str> = AGENTS
                    .iter()
                    .copied()
                    .filter(|a| matches!(states[a], AgentState::Killed { .. }))
                    .collect();
                let agent = killed[rng.below(killed.len())];
                report.note(format!("resume {agent} started"));
                resume(&rig.all, agent, &mut states, &mut windows);
            }
            _ => {
                let args = harmless_policy(&mut rng);
                policy_runs.push(tokio::spawn(cli_run(rig.all.clone(), args)));
            }
        }
    }
    report.ran_for = started.elapsed();

    // The end: no more faults; everything back, every agent resumed.
    tracing::info!("chaos: faults stopped, settling");
    for (i, _) in std::mem::take(&mut plans.gateway_restart) {
        rig.restart_gateway(i);
        *report.faults.entry("gateway-restart").or_default() += 1;
    }
    if let Some((i, _)) = plans.node_down.take() {
        tokio::task::block_in_place(|| rig.cluster.node(i).restart());
        *report.faults.entry("node-restart").or_default() += 1;
    }
    for h in policy_runs {
        report.policies.push(h.await.expect("policy task"));
    }
    wait_live(&setup, &["gw1", "gw2"]).await;
    // Every kill and resume returned, then every agent still killed resumed.
    loop {
        reap(&mut states, &mut report).await;
        for agent in AGENTS {
            if matches!(states[agent], AgentState::Killed { .. }) {
                resume(&rig.all, agent, &mut states, &mut windows);
            }
        }
        if states.values().all(|s| matches!(s, AgentState::Active)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut acked: Vec<((&'static str, &'static str), usize)> = Vec::new();
    for (pair, f) in floods {
        let n = tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("senders stop within a minute")
            .expect("sender task");
        acked.push((pair, n));
    }
    report.sent = attempts.load(Ordering::SeqCst);
    report.acked = acked.iter().map(|(_, n)| n).sum();

    // Wait until every stored intent is delivered or rejected with a record.
    let settle_start = Instant::now();
    let rejected: HashMap<String, (Option<u16>, String)> = loop {
        let rejected = audit_events(&setup)
            .await
            .into_iter()
            .filter(|e| e.kind == AuditKind::Reject)
            .filter_map(|e| Some((e.intent_id?, (e.status, e.reason))))
            .collect();
        let open = unresolved(&acked, &recorders, &rejected).len();
        if open == 0 || settle_start.elapsed() > SETTLE {
            break rejected;
        }
        tracing::info!(open, "chaos: waiting for delivery");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    report.settled_in = settle_start.elapsed();
    // Deliveries still in flight to or from an agent would show by now.
    tokio::time::sleep(Duration::from_secs(1)).await;

    judge(
        &mut report,
        &acked,
        &recorders,
        &notices,
        &rejected,
        &windows,
        &js,
    )
    .await;
    for s in servers {
        s.abort();
    }
    report
}

/// Runs `mesh-cli` with `args` against `urls` and records when it returned.
async fn cli_run(urls: String, args: Vec<String>) -> CliRun {
    let started = Instant::now();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = finished(mesh_cli(&urls, &refs)).await;
    CliRun {
        what: args.join(" "),
        exit: out.status.code(),
        started,
        returned: Instant::now(),
        output: shown(&out),
    }
}

/// Moves agents whose `mesh-cli kill` returned to `Killed`, and those whose resume returned
/// to `Active`.
async fn reap(states: &mut HashMap<&'static str, AgentState>, report: &mut Report) {
    for agent in AGENTS {
        let done = match &states[agent] {
            AgentState::Killing(h) | AgentState::Resuming(h) => h.is_finished(),
            _ => false,
        };
        if !done {
            continue;
        }
        match states.remove(agent) {
            Some(AgentState::Killing(h)) => {
                let run = h.await.expect("kill task");
                let confirmed = (run.exit == Some(0)).then_some(run.returned);
                report.note(format!("kill {agent} returned {:?}", run.exit));
                report.kills.push(run);
                states.insert(agent, AgentState::Killed { confirmed });
            }
            Some(AgentState::Resuming(h)) => {
                let run = h.await.expect("resume task");
                report.note(format!("resume {agent} returned {:?}", run.exit));
                report.resumes.push(run);
                states.insert(agent, AgentState::Active);
            }
            _ => unreachable!("checked above"),
        }
    }
}

/// Starts `mesh-cli resume` of a killed `agent`, closing its kill window as it starts.
fn resume(
    urls: &str,
    agent: &'static str,
    states: &mut HashMap<&'static str, AgentState>,
    windows: &mut Vec<Window>,
) {
    if let Some(AgentState::Killed {
        confirmed: Some(from),
    }) = states.get(agent)
    {
        windows.push(Window {
            agent,
            from: *from,
            until: Instant::now(),
        });
    }
    let run = cli_run(
        urls.to_string(),
        vec![
            "resume".into(),
            agent.into(),
            "--reason".into(),
            "chaos".into(),
        ],
    );
    states.insert(agent, AgentState::Resuming(tokio::spawn(run)));
}

/// Restarts the gateways and the node whose outage has ended.
fn end_outages(rig: &mut Rig, plans: &mut Plans, report: &mut Report, now: tokio::time::Instant) {
    let due: Vec<usize> = plans
        .gateway_restart
        .iter()
        .filter(|(_, at)| now >= **at)
        .map(|(i, _)| *i)
        .collect();
    for i in due {
        plans.gateway_restart.remove(&i);
        rig.restart_gateway(i);
        *report.faults.entry("gateway-restart").or_default() += 1;
        report.note(format!("{} restarted", rig.gateways[i].0));
    }
    if let Some((i, at)) = plans.node_down {
        if now >= at {
            tokio::task::block_in_place(|| rig.cluster.node(i).restart());
            plans.node_down = None;
            plans.node_ok_after = Some(now + Duration::from_secs(10));
            *report.faults.entry("node-restart").or_default() += 1;
            report.note(format!("node n{} restarted", i + 1));
        }
    }
}

/// A policy change that lets everything through: the action sent (`work`) stays allowed and
/// rates stay far above the senders' (docs/POLICIES.md).
fn harmless_policy(rng: &mut Rng) -> Vec<String> {
    let agent = AGENTS[rng.below(AGENTS.len())];
    let args: Vec<&str> = match rng.below(4) {
        0 => vec!["--default", "--rate", "1000/s", "--burst", "1000"],
        1 => vec!["--default", "--allow-send", "work", "--allow-receive", "*"],
        2 => vec![agent, "--allow-send", "work", "--rate", "500/s"],
        _ => vec![
            agent,
            "--allow-receive",
            "work",
            "--max-intents-per-day",
            "100000000",
        ],
    };
    ["policy", "set"]
        .into_iter()
        .chain(args)
        .map(String::from)
        .collect()
}

/// Stored intent ids `<from>-<to>-<i>` that are neither delivered nor rejected.
fn unresolved(
    acked: &[((&'static str, &'static str), usize)],
    recorders: &HashMap<&'static str, Recorder>,
    rejected: &HashMap<String, (Option<u16>, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for ((from, to), n) in acked {
        let got: HashSet<String> = recorders[to]
            .all()
            .into_iter()
            .filter(|r| r.from == *from)
            .map(|r| r.intent_id)
            .collect();
        for i in 0..*n {
            let id = format!("{from}-{to}-{i}");
            if !got.contains(&id) && !rejected.contains_key(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// Counts what happened to every stored intent and records the violations.
async fn judge(
    report: &mut Report,
    acked: &[((&'static str, &'static str), usize)],
    recorders: &HashMap<&'static str, Recorder>,
    notices: &HashMap<&'static str, Rejections>,
    rejected: &HashMap<String, (Option<u16>, String)>,
    windows: &[Window],
    js: &jetstream::Context,
) {
    let asserted = order_asserted_on(&report.server);
    let pairs: HashMap<(&str, &str), usize> = acked.iter().copied().collect();
    for ((from, to), n) in acked {
        let all = recorders[to].all();
        let mine: Vec<&agents::Received> = all.iter().filter(|r| r.from == *from).collect();
        let mut firsts: Vec<usize> = Vec::new();
        let mut first_at: Vec<&agents::Received> = Vec::new();
        let mut seen = HashSet::new();
        for r in &mine {
            if seen.insert(r.intent_id.clone()) {
                match r
                    .intent_id
                    .strip_prefix(&format!("{from}-{to}-"))
                    .and_then(|i| i.parse::<usize>().ok())
                {
                    Some(i) => {
                        firsts.push(i);
                        first_at.push(r);
                    }
                    None => report.violation(
                        "misrouted",
                        format!("{to} got intent {:?} from {from}", r.intent_id),
                    ),
                }
            }
        }
        report.duplicates += mine.len() - seen.len();
        let inverted: Vec<usize> = (1..firsts.len())
            .filter(|k| firsts[k - 1] >= firsts[*k])
            .collect();
        let seqs = if inverted.is_empty() {
            HashMap::new()
        } else {
            stream_seqs(js, &format!("mesh.intent.{from}.{to}.>")).await
        };
        for k in inverted {
            let (a, b) = (first_at[k - 1], first_at[k]);
            let what = format!(
                "{from}→{to}: {} (attempt {}, stream seqs {:?}) delivered at {:.3} before {} \
                 (attempt {}, stream seqs {:?}) at {:.3}; faults in the 20 s before: [{}]",
                firsts[k - 1],
                a.attempt,
                seqs.get(&a.intent_id),
                report.secs(a.at),
                firsts[k],
                b.attempt,
                seqs.get(&b.intent_id),
                report.secs(b.at),
                report.faults_before(b.at, Duration::from_secs(20))
            );
            let kind = if rejected.contains_key(&b.intent_id) {
                REJECTED_THEN_DELIVERED
            } else {
                ORDER
            };
            if asserted {
                report.violation(kind, what);
            } else {
                report.unasserted_inversions.push(format!("{kind}: {what}"));
            }
        }
        for i in 0..*n {
            let id = format!("{from}-{to}-{i}");
            let got = seen.contains(&id);
            if got {
                report.delivered += 1;
            }
            if let Some((status, reason)) = rejected.get(&id) {
                report.rejected += 1;
                if got {
                    report.delivered_then_rejected += 1;
                }
                if !reason.contains("is killed") {
                    report.violation(
                        "rejected-not-killed",
                        format!("{id}: status {status:?}, reason {reason:?}"),
                    );
                }
            }
        }
        if let Some(i) = firsts.iter().find(|i| **i >= *n) {
            report.violation(
                "delivered-unstored",
                format!("{from}→{to}: intent {i} delivered but only {n} were stored"),
            );
        }
    }
    for (agent, rec) in recorders {
        for r in rec.all() {
            if !pairs.contains_key(&(r.from.as_str(), *agent)) {
                report.violation(
                    "misrouted",
                    format!("{agent} got {:?} from {:?}", r.intent_id, r.from),
                );
            }
        }
    }
    for w in windows {
        for (agent, rec) in recorders {
            for r in rec.all() {
                let involved = *agent == w.agent || r.from == w.agent;
                if involved && r.at > w.from && r.at < w.until {
                    report.violation(
                        "delivered-while-killed",
                        format!(
                            "{} → {agent}: {} (attempt {}) {:.3} s after {}'s kill returned 0, \
                             {:.3} s before its resume; faults in the 20 s before: [{}]",
                            r.from,
                            r.intent_id,
                            r.attempt,
                            (r.at - w.from).as_secs_f64(),
                            w.agent,
                            (w.until - r.at).as_secs_f64(),
                            report.faults_before(r.at, Duration::from_secs(20))
                        ),
                    );
                }
            }
        }
    }
    for (sender, n) in notices {
        for (status, reason, id) in n.all() {
            if !rejected.contains_key(&id) {
                report.violation(
                    "notice-without-record",
                    format!("{sender} told {id} was rejected ({status} {reason}); no audit record"),
                );
            }
        }
    }
    let open = unresolved(acked, recorders, rejected);
    if !open.is_empty() {
        let seqs = stream_seqs(js, "mesh.intent.>").await;
        for id in open {
            match seqs.get(&id) {
                Some(seqs) => {
                    report.pending += 1;
                    report
                        .pending_ids
                        .push(format!("{id} (stream seqs {seqs:?})"));
                }
                None => report.violation(
                    "lost",
                    format!("{id} was stored but is not in the stream, delivered or rejected"),
                ),
            }
        }
    }
    for run in &report.kills.clone() {
        if run.exit != Some(0) && run.exit != Some(3) {
            report.violation("kill-failed", format!("{}: {}", run.what, run.output));
        }
    }
    for run in report.resumes.clone() {
        if run.exit != Some(0) && run.exit != Some(3) {
            report.violation("resume-failed", format!("{}: {}", run.what, run.output));
        }
    }
    // `policy set` promises no retry (docs/POLICIES.md): one that timed out on JetStream during
    // an outage, with exit 1 and nothing written, is counted and shown, not a violation.
    for run in report.policies.clone() {
        let timed_out = run.exit == Some(1) && run.output.contains("timed out");
        if run.exit != Some(0) && run.exit != Some(3) && !timed_out {
            report.violation("policy-failed", format!("{}: {}", run.what, run.output));
        }
    }
}
