//! Scale, issue 4 item 5: for each agent count (10, 1,000, 10,000 in a full run), on a server of
//! its own:
//!
//! 1. baseline throughput with that many agents;
//! 2. one intent is stored for every agent, then a gateway starts: the time from starting its
//!    process until every agent has received its intent is `start_s_<n>_agents` (a first start:
//!    the gateway creates one consumer per agent);
//! 3. gateway throughput with that many agents, and the gateway's RSS right after;
//! 4. the gateway is stopped, one more intent is stored per agent, and a new gateway starts on
//!    the stream that now also holds all the traffic of step 3: `restart_s_<n>_agents`.

use std::time::{Duration, Instant};

use crate::child::ChildProc;
use crate::load::{Pace, Publisher};
use crate::measure;
use crate::phases::{check, drain_within, record_cpu, stop_all, stop_one, Stage, STOP_GRACE};
use crate::relay::Shape;
use crate::report::{count_key, Report};
use crate::traffic::Route;
use crate::{progress, Env, Params};

pub async fn run(params: &Params, env: &Env, report: &mut Report) {
    for &n in &params.scale_agents {
        if let Err(e) = step(params, env, report, n).await {
            report.error(&format!("scale ({n} agents)"), &e);
        }
    }
    let (Some(&small), Some(&large)) = (params.scale_agents.first(), params.scale_agents.last())
    else {
        return;
    };
    let (s, l) = (count_key(small), count_key(large));
    let ratio = report
        .get(&format!("throughput_{l}_agents_per_s"))
        .zip(report.get(&format!("throughput_{s}_agents_per_s")))
        .filter(|(_, s)| *s > 0.0)
        .map(|(l, s)| l / s);
    report.set(format!("throughput_ratio_{l}_vs_{s}"), ratio);
}

/// How long `n` agents may take to get their first intent from a fresh gateway.
fn start_within(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20 * n as u64)
}

async fn step(params: &Params, env: &Env, report: &mut Report, n: usize) -> anyhow::Result<()> {
    let key = count_key(n);
    progress(format!("scale: {n} agents"));
    let stage = Stage::start(params, env, n).await?;
    stage.direct_stream().await?;
    let closed = stage.closed(params);

    let mut direct = stage.publisher(params, Route::Direct, 51).await?;
    let relay = stage.relay(env, Shape::default()).await?;
    let spec = stage.spec(
        params,
        closed,
        params.scale_measure,
        Some(("relay", &relay)),
    );
    let w = measure::window(&mut direct, &stage.agents, spec).await;
    stop_one(report, relay).await?;
    check(report, &format!("baseline, {n} agents"), &w);
    record_cpu(report, &format!("_baseline_{key}_agents"), &w);
    report.set(
        format!("baseline_throughput_{key}_agents_per_s"),
        Some(w.delivered_per_s),
    );

    if params.decompose && n >= 1000 {
        crate::phases::throughput::decompose(
            params,
            env,
            &stage,
            report,
            &format!("_{key}_agents"),
            params.scale_measure,
        )
        .await?;
    }

    // The intents stream must exist before intents are stored for a gateway not yet running.
    stage.mesh_objects().await?;
    let mut mesh = stage.publisher(params, Route::Mesh, 52).await?;
    let start = cold_start(env, &stage, &mut mesh, n, "gw-scale").await?;
    report.set(format!("start_s_{key}_agents"), Some(start.0.as_secs_f64()));
    let gw = start.1;
    let spec = stage.spec(params, closed, params.scale_measure, Some(("gateway", &gw)));
    let w = measure::window(&mut mesh, &stage.agents, spec).await;
    let mem = gw.memory();
    let server = stage.server_memory();
    stop_all(report, vec![gw]).await?;
    check(report, &format!("gateway, {n} agents"), &w);
    record_cpu(report, &format!("_{key}_agents"), &w);
    report.set(
        format!("throughput_{key}_agents_per_s"),
        Some(w.delivered_per_s),
    );
    report.set(format!("rss_mb_{key}_agents"), mem.map(|m| m.rss_mb));
    report.set(format!("peak_rss_mb_{key}_agents"), mem.map(|m| m.peak_mb));
    report.set(
        format!("nats_rss_mb_{key}_agents"),
        server.map(|m| m.rss_mb),
    );
    progress(format!(
        "scale {n}: gateway {:.0}/s (baseline {:.0}/s), RSS {:?} MB, start {:.2} s",
        w.delivered_per_s,
        report
            .get(&format!("baseline_throughput_{key}_agents_per_s"))
            .unwrap_or(0.0),
        mem.map(|m| m.rss_mb.round()),
        start.0.as_secs_f64()
    ));

    if !params.restart_every_count && Some(&n) != params.scale_agents.last() {
        return Ok(());
    }
    let restart = cold_start(env, &stage, &mut mesh, n, "gw-restart").await?;
    stop_all(report, vec![restart.1]).await?;
    report.set(
        format!("restart_s_{key}_agents"),
        Some(restart.0.as_secs_f64()),
    );
    Ok(())
}

/// Stores one intent for each of the `n` agents, starts gateway `id`, and waits until every
/// agent has received its intent. Returns the time from the start of the process to the last
/// agent's first delivery, and the running gateway.
async fn cold_start(
    env: &Env,
    stage: &Stage,
    publisher: &mut Publisher,
    n: usize,
    id: &str,
) -> anyhow::Result<(Duration, ChildProc)> {
    let sent = publisher
        .run(
            Pace::EachAgent { n },
            Instant::now() + drain_within(n as u64),
            None,
        )
        .await;
    if sent.stored != n as u64 {
        anyhow::bail!("stored {} of {n} intents before the start", sent.stored);
    }
    stage.agents.reset_reached();
    let started = Instant::now();
    let mut gw = ChildProc::gateway(env, &stage.url, id, &stage.gateway_env())?;
    let mut died = false;
    let all = measure::wait_until(start_within(n), || {
        died = gw.exited();
        died || stage.agents.reached() >= n as u64
    })
    .await
        && !died;
    let took = started.elapsed();
    if died {
        anyhow::bail!("gateway {id} exited; see {}", gw.log.display());
    }
    if !all {
        let reached = stage.agents.reached();
        let _ = gw.stop(STOP_GRACE).await;
        anyhow::bail!("{reached} of {n} agents reached in {took:?} after the gateway started");
    }
    Ok((took, gw))
}
