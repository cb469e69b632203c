//! Throughput and added latency, issue 4 items 1 and 2.
//!
//! Throughput: closed-loop publishing (bounded backlog, many PubAcks outstanding) through the
//! baseline relay, then through one gateway replica, alternated `rounds` times; the figure of each
//! side is its median. Latency: publish → agent receipt at half the gateway's measured maximum,
//! the same offered rate for both sides, so that "added" is the gateway's own cost.
//!
//! Every window also accounts for the CPU time of nats-server, the deliverer and the benchmark
//! process (`cpu_us_per_intent_*`, `cpu_cores_*`): on two cores, that says who the bottleneck is.

use crate::load::{Pace, Publisher};
use crate::measure::{self, median, percentile};
use crate::phases::{check, record_cpu, stop_one, Stage};
use crate::relay::Shape;
use crate::report::Report;
use crate::traffic::Route;
use crate::{progress, Env, Params};

pub async fn run(params: &Params, env: &Env, report: &mut Report) {
    if let Err(e) = measure_all(params, env, report).await {
        report.error("throughput", &e);
    }
}

async fn measure_all(params: &Params, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    progress(format!(
        "throughput: nats-server and {} agents",
        params.agents
    ));
    let stage = Stage::start(params, env, params.agents).await?;
    stage.direct_stream().await?;
    let objects = stage.mesh_objects().await?;
    let mut direct = stage.publisher(params, Route::Direct, 11).await?;
    let mut mesh = stage.publisher(params, Route::Mesh, 12).await?;
    let rounds = alternate(
        params,
        env,
        &stage,
        &objects,
        (&mut direct, &mut mesh),
        report,
        "",
    )
    .await?;
    let gw = rounds.gateway;
    report.set("throughput_intents_per_s", gw);
    report.set("baseline_throughput_per_s", rounds.baseline);
    report.set("throughput_ratio", rounds.ratio());
    report.set("gateway_rss_mb_throughput", rounds.rss.map(|m| m.rss_mb));
    if params.decompose {
        decompose(params, env, &stage, report, "", params.measure).await?;
    }

    // Added latency at half of the gateway's maximum, the same offered rate on both sides.
    let Some(max) = gw.filter(|g| *g > 0.0) else {
        anyhow::bail!("no gateway throughput, so no rate for the latency run");
    };
    let rate = max / 2.0;
    report.set("latency_rate_per_s", Some(rate));
    let paced = Pace::Rate { per_s: rate };
    let relay = stage.relay(env, Shape::default()).await?;
    let mut spec = stage.spec(params, paced, params.measure, Some(("relay", &relay)));
    spec.timing = true;
    let mut base = measure::window(&mut direct, &stage.agents, spec).await;
    stop_one(report, relay).await?;
    check(report, "baseline latency", &base);
    let gws = stage
        .gateways(env, &objects, &["gw-latency".to_string()])
        .await?;
    let mut spec = stage.spec(params, paced, params.measure, Some(("gateway", &gws[0])));
    spec.timing = true;
    let mut gwl = measure::window(&mut mesh, &stage.agents, spec).await;
    stage.stop_gateways(report, &objects, gws).await?;
    check(report, "gateway latency", &gwl);
    // The relay shaped like the gateway's use of JetStream, at the same rate.
    let mut shaped_trips = Vec::new();
    if params.decompose {
        let shape = Shape {
            per_recipient: Some(stage.agents.len()),
            discovery: true,
        };
        let relay = stage.relay(env, shape).await?;
        let mut spec = stage.spec(params, paced, params.measure, Some(("relay", &relay)));
        spec.timing = true;
        shaped_trips = measure::window(&mut direct, &stage.agents, spec)
            .await
            .trips;
        stop_one(report, relay).await?;
        remove_shaped_consumers(&stage).await;
    }
    for (key, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        let b = percentile(&mut base.trips, p).map(measure::ms);
        let g = percentile(&mut gwl.trips, p).map(measure::ms);
        let s = percentile(&mut shaped_trips, p).map(measure::ms);
        report.set(format!("latency_{key}_ms"), g);
        report.set(format!("baseline_latency_{key}_ms"), b);
        report.set(
            format!("baseline_per_recipient_discovery_latency_{key}_ms"),
            s,
        );
        report.set(
            format!("added_latency_{key}_ms"),
            g.zip(b).map(|(g, b)| g - b),
        );
    }
    report.set("cpu_cores_gateway_half_load", gwl.cpu_cores("gateway"));
    progress(format!(
        "latency at {rate:.0}/s: gateway p99 {:?} ms, baseline p99 {:?} ms",
        report.get("latency_p99_ms"),
        report.get("baseline_latency_p99_ms")
    ));
    Ok(())
}

/// What alternated closed-loop windows measured: the median rate of each side.
pub struct Rounds {
    pub baseline: Option<f64>,
    pub gateway: Option<f64>,
    /// The gateway's memory at the end of its last window.
    pub rss: Option<crate::child::Memory>,
}

impl Rounds {
    /// Gateway ÷ baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.gateway.zip(self.baseline).map(|(g, b)| g / b)
    }
}

/// Closed-loop windows through the baseline relay, then through one fresh gateway replica,
/// `params.rounds` times; records the CPU cost of each side (`cpu_us_per_intent_*{suffix}`,
/// `…{suffix}_baseline`, their totals and `cpu_cost_ratio{suffix}`) and returns the medians.
/// `publishers` are the direct route's and the mesh route's.
pub async fn alternate(
    params: &Params,
    env: &Env,
    stage: &Stage,
    objects: &mesh_gateway::MeshObjects,
    publishers: (&mut Publisher, &mut Publisher),
    report: &mut Report,
    suffix: &str,
) -> anyhow::Result<Rounds> {
    let (direct, mesh) = publishers;
    let closed = stage.closed(params);
    let what = format!("throughput{}", suffix.replace('_', " "));
    let (mut base_rates, mut mesh_rates) = (Vec::new(), Vec::new());
    let mut rss = None;
    for round in 0..params.rounds {
        let relay = stage.relay(env, Shape::default()).await?;
        let spec = stage.spec(params, closed, params.measure, Some(("relay", &relay)));
        let w = measure::window(direct, &stage.agents, spec).await;
        stop_one(report, relay).await?;
        check(report, &format!("baseline {what}"), &w);
        record_cpu(report, &format!("{suffix}_baseline"), &w);
        progress(format!(
            "{what} round {round}: baseline {:.0}/s",
            w.delivered_per_s
        ));
        base_rates.push(w.delivered_per_s);

        let gws = stage
            .gateways(
                env,
                objects,
                &[format!("gw-t{}{round}", suffix.replace('_', "-"))],
            )
            .await?;
        let spec = stage.spec(params, closed, params.measure, Some(("gateway", &gws[0])));
        let w = measure::window(mesh, &stage.agents, spec).await;
        rss = gws[0].memory().or(rss);
        stage.stop_gateways(report, objects, gws).await?;
        check(report, &format!("gateway {what}"), &w);
        record_cpu(report, suffix, &w);
        progress(format!(
            "{what} round {round}: gateway {:.0}/s",
            w.delivered_per_s
        ));
        mesh_rates.push(w.delivered_per_s);
    }
    // CPU per intent summed over nats-server, deliverer and senders/agents: less sensitive to
    // other tenants of a shared machine than rates are.
    let total = |r: &Report, suffix: &str, deliverer: &str| -> Option<f64> {
        Some(
            r.get(&format!("cpu_us_per_intent_nats{suffix}"))?
                + r.get(&format!("cpu_us_per_intent_{deliverer}{suffix}"))?
                + r.get(&format!("cpu_us_per_intent_bench{suffix}"))?,
        )
    };
    let (g, b) = (
        total(report, suffix, "gateway"),
        total(report, &format!("{suffix}_baseline"), "relay"),
    );
    report.set(format!("cpu_us_per_intent_total{suffix}"), g);
    report.set(format!("cpu_us_per_intent_total{suffix}_baseline"), b);
    report.set(
        format!("cpu_cost_ratio{suffix}"),
        g.zip(b).map(|(g, b)| b / g),
    );
    Ok(Rounds {
        baseline: median(base_rates),
        gateway: median(mesh_rates),
        rss,
    })
}

/// The baseline relay shaped like the gateway's use of JetStream (one pinned consumer per agent,
/// then also a discovery consumer), with no gateway logic: splits the gap between baseline and
/// gateway into what the design costs NATS and what the gateway's own code costs.
pub async fn decompose(
    params: &Params,
    env: &Env,
    stage: &Stage,
    report: &mut Report,
    suffix: &str,
    measure: std::time::Duration,
) -> anyhow::Result<()> {
    let mut direct = stage.publisher(params, Route::Direct, 13).await?;
    let n = stage.agents.len();
    for (key, shape) in [
        (
            "per_recipient",
            Shape {
                per_recipient: Some(n),
                discovery: false,
            },
        ),
        (
            "per_recipient_discovery",
            Shape {
                per_recipient: Some(n),
                discovery: true,
            },
        ),
    ] {
        let relay = stage.relay(env, shape).await?;
        let spec = stage.spec(
            params,
            stage.closed(params),
            measure,
            Some(("relay", &relay)),
        );
        let w = measure::window(&mut direct, &stage.agents, spec).await;
        stop_one(report, relay).await?;
        check(report, &format!("baseline ({key}{suffix})"), &w);
        record_cpu(report, &format!("_baseline_{key}{suffix}"), &w);
        report.set(
            format!("baseline_{key}_throughput{suffix}_per_s"),
            Some(w.delivered_per_s),
        );
        progress(format!(
            "throughput: baseline shaped {key}: {:.0}/s",
            w.delivered_per_s
        ));
        remove_shaped_consumers(stage).await;
    }
    Ok(())
}

/// Deletes the shaped relay's consumers, so that the next relay starts without them.
async fn remove_shaped_consumers(stage: &Stage) {
    for i in 0..stage.agents.len() {
        let name = format!("r_{}", crate::traffic::agent(i));
        let _ = stage
            .js
            .delete_consumer_from_stream(name, crate::traffic::DIRECT_STREAM)
            .await;
    }
}
