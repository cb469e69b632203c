//! Kill fence, issue 4 item 3: from `kill` to "every live replica confirmed", with one and with
//! three gateway replicas, while intents flow at half the measured maximum.
//!
//! The operator runs on a thread of its own with its own runtime, as `mesh-cli` would run in a
//! process of its own, so that the load generator does not delay it. Each round kills one agent
//! (cycling through all of them) twice:
//!
//! - with mesh-cli's own [`Switch`], the figure an operator sees (`kill_fence_*`): from the flag
//!   write to the last confirmation, which includes mesh-cli's own steps in between (pausing the
//!   consumer, reading the live replicas);
//! - with the bare protocol (`kill_fence_protocol_*`): subscribe, write the flag, wait for every
//!   replica's `FenceAck` — the replicas' part alone.
//!
//! and resumes it after each.
//!
//! Replicas start their recipient workers when the load starts. A worker that finds another
//! replica's deliveries unacknowledged waits `ack_wait + 1 s` before it pulls, and a fence on
//! that replica waits for it. The first kill, one second into the load, shows that
//! (`kill_fence_first_ms_*`); the measured kills start once that wait is over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use mesh_cli::switch::Switch;
use mesh_schemas::{decode, encode, AgentId, FenceAck, KillRecord, KillState};

use crate::load::Pace;
use crate::measure::{self, percentile};
use crate::phases::{drain_within, stop_all, Stage};
use crate::report::Report;
use crate::traffic::{self, Route};
use crate::{progress, Env, Params};

/// How long one kill or resume may take before the round counts as failed.
const FENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the first kill, one second into the load, may take.
const FIRST_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(params: &Params, env: &Env, report: &mut Report) {
    for replicas in [1usize, 3] {
        if let Err(e) = measure_replicas(params, env, report, replicas).await {
            report.error(&format!("kill fence ({replicas} replicas)"), &e);
        }
    }
    // The target is about three replicas.
    report.set(
        "kill_fence_p50_ms",
        report.get("kill_fence_p50_ms_3_replicas"),
    );
    report.set(
        "kill_fence_p99_ms",
        report.get("kill_fence_p99_ms_3_replicas"),
    );
}

/// What the operator thread measured, in microseconds.
#[derive(Default)]
struct Samples {
    /// Switch (mesh-cli): flag write → last confirmation.
    switch_fence: Vec<u32>,
    /// Switch (mesh-cli): the whole command, audit record included.
    switch_total: Vec<u32>,
    /// Bare protocol: flag write → last confirmation.
    protocol: Vec<u32>,
    /// Bare protocol: the longest time a replica spent between seeing the flag and confirming
    /// (`FenceAck::took_us`: waiting for in-flight deliveries and held work).
    replica_wait: Vec<u32>,
    /// Switch resume: flag write → last confirmation.
    resume_fence: Vec<u32>,
    /// Kills not confirmed by every replica within the timeout.
    unconfirmed: usize,
    /// The same for the bare-protocol kills (their sample is the timeout).
    unconfirmed_protocol: usize,
    /// The first kill, one second into the load (bare protocol); `None` if not confirmed.
    first: Option<Duration>,
}

async fn measure_replicas(
    params: &Params,
    env: &Env,
    report: &mut Report,
    replicas: usize,
) -> anyhow::Result<()> {
    let stage = Stage::start(params, env, params.agents).await?;
    let objects = stage.mesh_objects().await?;
    let rate = report
        .get("latency_rate_per_s")
        .unwrap_or(5_000.0)
        .max(100.0);
    let suffix = if replicas == 1 {
        "_1_replica".to_string()
    } else {
        format!("_{replicas}_replicas")
    };
    let what = format!("kill fence ({replicas} replicas)");
    let ids: Vec<String> = (0..replicas)
        .map(|i| format!("gw-f{replicas}-{i}"))
        .collect();
    let keys = |name: &str| format!("{name}{suffix}");
    let fence = Fence {
        stage: &stage,
        objects: &objects,
        ids: &ids,
        rate,
        what: &what,
        keys: &keys,
    };
    under_load(params, env, report, fence).await
}

/// A fence measurement: where, with which replicas, at which load, under which keys.
pub struct Fence<'a> {
    pub stage: &'a Stage,
    pub objects: &'a mesh_gateway::MeshObjects,
    /// The gateway replicas to start (replica `i` on node `i % nodes`).
    pub ids: &'a [String],
    /// Intents per second while the kills run.
    pub rate: f64,
    /// Names the measurement in notes and progress lines.
    pub what: &'a str,
    /// The key of a figure: `keys("kill_fence_p50_ms")`.
    pub keys: &'a dyn Fn(&str) -> String,
}

/// Starts the gateway replicas of `fence` and measures `params.kills` kills while intents flow
/// at its rate.
pub async fn under_load(
    params: &Params,
    env: &Env,
    report: &mut Report,
    fence: Fence<'_>,
) -> anyhow::Result<()> {
    let Fence {
        stage,
        objects,
        ids,
        rate,
        what,
        keys,
    } = fence;
    let replicas = ids.len();
    progress(format!(
        "{what}: {replicas} replica(s), {} kills under load",
        params.kills
    ));
    let gws = stage.gateways(env, objects, ids).await?;
    let mut publisher = stage.publisher(params, Route::Mesh, 21).await?;

    let (tx, rx) = tokio::sync::oneshot::channel();
    let ack_wait = mesh_gateway::GatewayConfig::load(None, std::env::vars().collect())
        .map(|c| c.ack_wait)
        .unwrap_or(Duration::from_secs(15));
    let settle = if replicas > 1 {
        params.warmup + ack_wait + Duration::from_secs(2)
    } else {
        params.warmup
    };
    let (cfg, agents, kills) = (stage.cli_config(), params.agents, params.kills);
    let live = ids.to_vec();
    std::thread::Builder::new()
        .name("operator".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("operator runtime")
                .and_then(|rt| rt.block_on(operate(cfg, agents, kills, settle, live)));
            let _ = tx.send(result);
        })
        .context("cannot start the operator thread")?;

    let stop = AtomicBool::new(false);
    let before = stage.agents.received();
    let until = Instant::now() + Duration::from_secs(600);
    let (sent, samples) = tokio::join!(
        publisher.run(Pace::Rate { per_s: rate }, until, Some(&stop)),
        async {
            // Bounded: every kill and resume has its own timeout.
            let r = tokio::time::timeout(Duration::from_secs(600), rx).await;
            stop.store(true, Ordering::Relaxed);
            match r {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(anyhow::anyhow!("operator thread died")),
                Err(_) => Err(anyhow::anyhow!("operator did not finish in 600 s")),
            }
        }
    );
    let target = before + sent.stored;
    let drained = measure::wait_until(drain_within(sent.stored), || {
        stage.agents.received() >= target
    })
    .await;
    stop_all(report, gws).await?;
    let mut s = samples?;
    if !drained {
        report.note(format!(
            "{what}: {} intents not received after the last resume",
            target.saturating_sub(stage.agents.received())
        ));
    }
    let pct = |v: &mut Vec<u32>, p| percentile(v, p).map(measure::ms);
    report.set(keys("kill_fence_p50_ms"), pct(&mut s.switch_fence, 50.0));
    report.set(keys("kill_fence_p99_ms"), pct(&mut s.switch_fence, 99.0));
    report.set(
        keys("kill_fence_protocol_p50_ms"),
        pct(&mut s.protocol, 50.0),
    );
    report.set(
        keys("kill_fence_protocol_p99_ms"),
        pct(&mut s.protocol, 99.0),
    );
    report.set(
        keys("kill_fence_replica_wait_p50_ms"),
        pct(&mut s.replica_wait, 50.0),
    );
    report.set(
        keys("kill_fence_replica_wait_p99_ms"),
        pct(&mut s.replica_wait, 99.0),
    );
    report.set(keys("kill_command_p99_ms"), pct(&mut s.switch_total, 99.0));
    report.set(keys("resume_fence_p99_ms"), pct(&mut s.resume_fence, 99.0));
    report.set(keys("kill_load_per_s"), Some(sent.rate()));
    report.set(
        keys("kill_fence_first_ms"),
        s.first.map(|d| d.as_secs_f64() * 1000.0),
    );
    if s.first.is_none() {
        report.note(format!(
            "{what}: the first kill, 1 s into the load, was not confirmed within {FIRST_TIMEOUT:?}"
        ));
    }
    report.set(keys("kills_unconfirmed"), Some(s.unconfirmed as f64));
    report.set(
        keys("kills_unconfirmed_protocol"),
        Some(s.unconfirmed_protocol as f64),
    );
    if s.unconfirmed + s.unconfirmed_protocol > 0 {
        report.note(format!(
            "{what}: {} mesh-cli kills and {} bare-protocol kills of {} were not confirmed by \
             every replica within {FENCE_TIMEOUT:?} (their samples are that timeout); see the \
             replicas' logs in the log directory",
            s.unconfirmed, s.unconfirmed_protocol, params.kills
        ));
    }
    progress(format!(
        "{what}: p50 {:?} ms, p99 {:?} ms (protocol p99 {:?} ms) at {:.0} intents/s",
        report.get(&keys("kill_fence_p50_ms")),
        report.get(&keys("kill_fence_p99_ms")),
        report.get(&keys("kill_fence_protocol_p99_ms")),
        sent.rate()
    ));
    Ok(())
}

/// The operator: `kills` rounds of Switch kill, resume, bare-protocol kill, resume.
async fn operate(
    cfg: mesh_cli::CliConfig,
    agents: usize,
    kills: usize,
    settle: Duration,
    live: Vec<String>,
) -> anyhow::Result<Samples> {
    let started = Instant::now();
    let mesh = mesh_cli::mesh::Mesh::open(cfg)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let objects = mesh.ensure().await.map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut s = Samples::default();
    let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
    let resume = |agent: &AgentId| Switch {
        agent: agent.clone(),
        state: KillState::Active,
        reason: "mesh-bench".into(),
        by: "mesh-bench".into(),
        timeout: FIRST_TIMEOUT,
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = AgentId::new(traffic::agent(0))?;
    s.first = bare_kill(&mesh, &objects, &first, &live, FIRST_TIMEOUT, usize::MAX)
        .await
        .ok()
        .filter(|b| b.confirmed)
        .map(|b| b.took);
    resume(&first)
        .apply(&mesh)
        .await
        .map_err(|e| anyhow::anyhow!("resume {first}: {e:#}"))?;
    tokio::time::sleep_until((started + settle).into()).await;

    for k in 0..kills {
        let agent = AgentId::new(traffic::agent(k % agents.max(1)))?;
        let switch = |state| Switch {
            agent: agent.clone(),
            state,
            reason: format!("mesh-bench round {k}"),
            by: "mesh-bench".into(),
            timeout: FENCE_TIMEOUT,
        };
        let t = Instant::now();
        let out = switch(KillState::Killed)
            .apply(&mesh)
            .await
            .map_err(|e| anyhow::anyhow!("kill {agent}: {e:#}"))?;
        s.switch_total.push(us(t.elapsed()));
        s.switch_fence.push(us(out.replicas.elapsed));
        if !out.confirmed {
            s.unconfirmed += 1;
        }
        let out = switch(KillState::Active)
            .apply(&mesh)
            .await
            .map_err(|e| anyhow::anyhow!("resume {agent}: {e:#}"))?;
        s.resume_fence.push(us(out.replicas.elapsed));

        let bare = bare_kill(&mesh, &objects, &agent, &live, FENCE_TIMEOUT, k).await?;
        s.protocol.push(us(bare.took));
        s.replica_wait
            .push(u32::try_from(bare.longest_wait_us).unwrap_or(u32::MAX));
        if !bare.confirmed {
            s.unconfirmed_protocol += 1;
        }
        switch(KillState::Active)
            .apply(&mesh)
            .await
            .map_err(|e| anyhow::anyhow!("resume {agent}: {e:#}"))?;
    }
    Ok(s)
}

/// The fence protocol with nothing else: subscribe to the confirmations, write the flag, wait
/// for every replica in `live` (at most `timeout`). Then holds the consumer, as mesh-cli would.
async fn bare_kill(
    mesh: &mesh_cli::mesh::Mesh,
    objects: &mesh_gateway::MeshObjects,
    agent: &AgentId,
    live: &[String],
    timeout: Duration,
    round: usize,
) -> anyhow::Result<Bare> {
    let mut acks = mesh
        .client
        .subscribe(mesh.subjects.fenced(agent))
        .await
        .context("subscribe to fence acks")?;
    let record = encode(&KillRecord::killed(
        format!("mesh-bench bare round {round}"),
        "mesh-bench",
    ))?;
    let started = Instant::now();
    let revision = objects
        .kill
        .put(agent.as_str(), record.into())
        .await
        .context("write the kill flag")?;
    let mut missing: Vec<&String> = live.iter().collect();
    let mut longest_wait_us = 0u64;
    let deadline = tokio::time::Instant::now() + timeout;
    while !missing.is_empty() {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, acks.next()).await else {
            // A missed fence is a figure (like an unconfirmed Switch kill), not a failed run.
            tracing::warn!(%agent, ?missing, ?timeout, "kill not confirmed in time");
            break;
        };
        if let Ok(ack) = decode::<FenceAck>(&msg.payload) {
            if ack.revision >= revision && ack.state == KillState::Killed {
                missing.retain(|id| **id != ack.gateway);
                longest_wait_us = longest_wait_us.max(ack.took_us);
            }
        }
    }
    let took = started.elapsed();
    let _ = acks.unsubscribe().await;
    mesh_gateway::setup::set_hold(&objects.intents, &mesh.cfg.gateway_config(), agent, true)
        .await
        .context("hold the consumer")?;
    Ok(Bare {
        took,
        longest_wait_us,
        confirmed: missing.is_empty(),
    })
}

/// What one bare-protocol kill measured.
struct Bare {
    /// Flag write → last confirmation, or → the timeout when a replica did not confirm.
    took: Duration,
    /// The longest `FenceAck::took_us` received.
    longest_wait_us: u64,
    /// Whether every live replica confirmed before the timeout.
    confirmed: bool,
}
