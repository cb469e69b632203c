//! mesh-bench: measures Agent Mesh against raw NATS in the same run, on the same machine, so that
//! the noise of a shared machine hits both sides alike and the ratios stay meaningful (issue 4).
//!
//! The benchmark starts its own `nats-server` (found the way `mesh-testkit` finds it) and runs
//! every gateway replica and the baseline relay as child processes of its own binary
//! (`mesh-bench child gateway|relay`), each on a current-thread runtime like `mesh-gateway`. The
//! child gateway calls the same [`mesh_gateway::run`] as the real binary, so its RSS is the
//! gateway's own. Senders and agents live in the benchmark process and are shared by both sides.
//!
//! # Layout
//!
//! - [`params`]: the sizes and durations of a full and of a `--quick` run.
//! - [`access`]: how clients connect: open, or each identity with credentials of its own.
//! - [`traffic`]: agent and sender names, subjects, time-stamped payloads, the pair generator.
//! - [`agents`]: the acknowledging agents: plain queue subscribers that count, time and reply.
//! - [`load`]: the senders: windowed JetStream publishing, closed-loop, paced or counted.
//! - [`child`]: child processes (gateway replicas, baseline relay): spawn, readiness, RSS, stop.
//! - [`relay`]: the baseline: JetStream pull consumer → request to the agent → ack, nothing else.
//! - [`measure`]: one measured run against whatever delivers (relay or gateway), percentiles.
//! - [`phases`]: one module per figure: throughput and latency, kill fence, replay, scale, policy,
//!   secured against open (and the cost of minting credentials), and throughput and fence on a
//!   three-node cluster.
//! - [`report`]: the figures, the targets of issue 4, the table and the JSON file.
//! - [`machine`]: what the run ran on.
#![forbid(unsafe_code)]

pub mod access;
pub mod agents;
pub mod child;
pub mod load;
pub mod machine;
pub mod measure;
pub mod params;
pub mod phases;
pub mod relay;
pub mod report;
pub mod traffic;

use std::path::PathBuf;
use std::time::Instant;

pub use params::Params;
pub use report::Report;

/// Where the run keeps its child logs and which binary it re-executes for its children.
#[derive(Clone, Debug)]
pub struct Env {
    /// This binary; children are `<exe> child …`.
    pub exe: PathBuf,
    /// Logs of the children, kept after the run.
    pub log_dir: PathBuf,
    /// With `--perf DIR`: every gateway child is recorded with `perf record` into DIR.
    pub perf_dir: Option<PathBuf>,
    /// With `--only`: the phases to run (see [`PHASES`]).
    pub only: Option<Vec<String>>,
}

impl Env {
    /// Whether phase `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == name))
    }
}

/// The phases, in the order they run.
pub const PHASES: &[&str] = &[
    "throughput",
    "fence",
    "replay",
    "policy",
    "scale",
    "secured",
    "cluster",
];

/// Runs every phase in order. A phase that fails is recorded in the report (its figures stay
/// empty) and the run goes on; the caller turns recorded errors into a non-zero exit.
pub async fn run(params: Params, env: Env, command: String) -> Report {
    let started = Instant::now();
    let mut report = Report::new(&params, command);
    if env.runs("throughput") {
        phases::throughput::run(&params, &env, &mut report).await;
    }
    if env.runs("fence") {
        phases::fence::run(&params, &env, &mut report).await;
    }
    if env.runs("replay") {
        phases::replay::run(&params, &env, &mut report).await;
    }
    if env.runs("policy") {
        phases::policy::run(&params, &env, &mut report).await;
    }
    if env.runs("scale") {
        phases::scale::run(&params, &env, &mut report).await;
    }
    if env.runs("secured") {
        phases::secured::run(&params, &env, &mut report).await;
    }
    if env.runs("cluster") {
        phases::cluster::run(&params, &env, &mut report).await;
    }
    report.finish(started.elapsed());
    report
}

/// Prints a progress line on stderr (the table and the JSON are the results).
pub fn progress(line: impl AsRef<str>) {
    eprintln!("mesh-bench: {}", line.as_ref());
}
