//! Secured against open (identity issue): the mesh's throughput and added latency on a secured
//! nats-server (operator mode, every client with credentials of its own) against an open one, in
//! the same run; target: the secured mesh keeps ≥ 0.95 of the open mesh's throughput. Also the
//! cost of minting agents' credentials ([`super::mint`]).
//!
//! Both sides have the same shape, the shape of a real mesh: every agent and every sender on a
//! connection of its own with its own inbox prefix, one gateway replica as a child process. The
//! only difference is credentials: on the secured side each client connects with its own
//! `.creds` (the gateway with the gateway's, through `MESH_NATS_CREDS`) and the server checks
//! every publish and subscription against its permissions. That shape (200 connections) differs
//! from the throughput phase's (a few shared ones), so compare these figures with each other,
//! not with `throughput_intents_per_s`.
//!
//! Both servers live through the whole phase, and the rounds alternate which side goes first,
//! so that drift on a shared machine hits both alike. Throughput is closed-loop, as in the
//! throughput phase; latency is publish → agent receipt at half the open side's maximum, the
//! same offered rate on both sides.

use crate::access::Access;
use crate::load::{Pace, Publisher};
use crate::measure::{self, median, percentile};
use crate::phases::{check, record_cpu, Stage};
use crate::report::Report;
use crate::traffic;
use crate::{progress, Env, Params};

pub async fn run(params: &Params, env: &Env, report: &mut Report) {
    if let Err(e) = super::mint::run(params, report) {
        report.error("secured (minting)", &e);
    }
    if let Err(e) = measure_all(params, env, report).await {
        report.error("secured", &e);
    }
}

/// One side: its stage, its mesh objects, its senders.
struct Side {
    stage: Stage,
    objects: mesh_gateway::MeshObjects,
    senders: Publisher,
    /// `open` or `secured`: key suffixes and progress.
    name: &'static str,
}

impl Side {
    async fn start(params: &Params, env: &Env, access: Access, seed: u64) -> anyhow::Result<Side> {
        let name = access.name();
        let stage = Stage::start_each(env, params.agents, access).await?;
        let objects = stage.mesh_objects().await?;
        let senders = stage.senders(params, seed).await?;
        Ok(Side {
            stage,
            objects,
            senders,
            name,
        })
    }

    /// One window through a fresh gateway replica `id`.
    async fn window(
        &mut self,
        params: &Params,
        env: &Env,
        report: &mut Report,
        pace: Option<Pace<'_>>,
        id: String,
    ) -> anyhow::Result<measure::Window> {
        let gws = self.stage.gateways(env, &self.objects, &[id]).await?;
        let timing = pace.is_some();
        let pace = pace.unwrap_or(self.stage.closed(params));
        let mut spec = self
            .stage
            .spec(params, pace, params.measure, Some(("gateway", &gws[0])));
        spec.timing = timing;
        let w = measure::window(&mut self.senders, &self.stage.agents, spec).await;
        self.stage.stop_gateways(report, &self.objects, gws).await?;
        Ok(w)
    }
}

async fn measure_all(params: &Params, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    progress(format!(
        "secured: an open and a secured nats-server, {} agents and {} senders each on a connection of its own",
        params.agents, params.senders
    ));
    let ids = (0..params.senders)
        .map(traffic::sender)
        .chain((0..params.agents).map(traffic::agent));
    let mut sides = [
        Side::start(params, env, Access::open(), 21).await?,
        Side::start(params, env, Access::secured(ids)?, 21).await?,
    ];

    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..params.secured_rounds {
        // Alternate which side goes first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let side = &mut sides[k];
            let id = format!("gw-{}-{round}", side.name);
            let w = side.window(params, env, report, None, id).await?;
            check(report, &format!("{} mesh throughput", side.name), &w);
            record_cpu(report, &format!("_{}", side.name), &w);
            progress(format!(
                "secured round {round}: {} mesh {:.0}/s",
                side.name, w.delivered_per_s
            ));
            rates[k].push(w.delivered_per_s);
        }
    }
    let [open, secured] = rates.map(median);
    report.set("secured_open_throughput_per_s", open);
    report.set("secured_throughput_per_s", secured);
    report.set(
        "secured_throughput_ratio",
        secured.zip(open).map(|(s, o)| s / o),
    );
    // CPU per intent summed over nats-server, gateway and senders/agents: steadier than rates
    // on a shared machine.
    let total = |r: &Report, side: &str| -> Option<f64> {
        ["nats", "gateway", "bench"]
            .iter()
            .map(|p| r.get(&format!("cpu_us_per_intent_{p}_{side}")))
            .sum()
    };
    let (o, s) = (total(report, "open"), total(report, "secured"));
    report.set("cpu_us_per_intent_total_open", o);
    report.set("cpu_us_per_intent_total_secured", s);
    report.set("secured_cpu_cost_ratio", o.zip(s).map(|(o, s)| o / s));

    // Added latency at half the open side's maximum, the same offered rate on both sides.
    let Some(max) = open.filter(|o| *o > 0.0) else {
        anyhow::bail!("no open mesh throughput, so no rate for the latency run");
    };
    let rate = max / 2.0;
    report.set("secured_latency_rate_per_s", Some(rate));
    let mut trips = [Vec::new(), Vec::new()];
    for (k, side) in sides.iter_mut().enumerate() {
        let id = format!("gw-{}-latency", side.name);
        let paced = Pace::Rate { per_s: rate };
        let w = side.window(params, env, report, Some(paced), id).await?;
        check(report, &format!("{} mesh latency", side.name), &w);
        trips[k] = w.trips;
    }
    let [mut open_trips, mut secured_trips] = trips;
    for (key, p) in [("p50", 50.0), ("p99", 99.0)] {
        let o = percentile(&mut open_trips, p).map(measure::ms);
        let s = percentile(&mut secured_trips, p).map(measure::ms);
        report.set(format!("secured_open_latency_{key}_ms"), o);
        report.set(format!("secured_latency_{key}_ms"), s);
        report.set(
            format!("secured_added_latency_{key}_ms"),
            s.zip(o).map(|(s, o)| s - o),
        );
    }
    progress(format!(
        "secured: throughput ratio {:?}; at {rate:.0}/s p99 secured {:?} ms, open {:?} ms",
        report.get("secured_throughput_ratio"),
        report.get("secured_latency_p99_ms"),
        report.get("secured_open_latency_p99_ms"),
    ));
    Ok(())
}
