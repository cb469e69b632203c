//! Policy cost, issue 4 item 6: throughput with a policy on every agent (rate limit, intent and
//! cost caps, action rules, all generous enough never to trigger) against no policy at all.
//!
//! Whether the gateway enforces policies is found out by asking it, not by reading its version:
//! a probe sender gets a policy that denies the action `bench.denied`, and sends one such intent.
//! If no 403 rejection comes back, the gateway under test has no policies yet, and the figure is
//! `null` with a note. Policies are written as JSON records (the mesh's codec reads JSON), so
//! this phase does not depend on the policy types of `mesh-schemas` while they evolve.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;

use crate::measure::{self, median};
use crate::phases::{check, record_cpu, stop_all, Stage};
use crate::report::Report;
use crate::traffic::{self, Route};
use crate::{progress, Env, Params};

/// The policy bucket's default name.
const BUCKET: &str = "mesh-policy";

pub async fn run(params: &Params, env: &Env, report: &mut Report) {
    if let Err(e) = measure_policy(params, env, report).await {
        report.error("policy", &e);
        report.set("policy_cost_ratio", None);
    }
}

/// How much of a policy to set: each level adds checks to the previous one.
#[derive(Clone, Copy, Debug)]
enum Level {
    /// `allow_send`, `deny_send`, `allow_receive`, `deny_receive`.
    Actions,
    /// + `rate` and `burst`.
    Rate,
    /// + `max_intents_per_hour`, `max_intents_per_day`, `on_breach`.
    Caps,
    /// + `max_cost_usd_per_day`, `max_cost_usd`: every field a policy has, health aside.
    Ceilings,
}

impl Level {
    fn key(self) -> &'static str {
        match self {
            Level::Actions => "actions",
            Level::Rate => "rate",
            Level::Caps => "caps",
            Level::Ceilings => "ceilings",
        }
    }
}

/// A policy up to `level`, generous enough that benchmark traffic never triggers it.
fn generous_policy(level: Level) -> serde_json::Value {
    let mut p = json!({
        "allow_send": [traffic::ACTION, "bench.>"],
        "deny_send": ["admin.>"],
        "allow_receive": [traffic::ACTION, "bench.>"],
        "deny_receive": ["admin.>"],
    });
    let mut add = |k: &str, v: serde_json::Value| {
        if let Some(map) = p.as_object_mut() {
            map.insert(k.to_string(), v);
        }
    };
    if matches!(level, Level::Rate | Level::Caps | Level::Ceilings) {
        add("rate", json!("1000000/s"));
        add("burst", json!(1_000_000));
    }
    if matches!(level, Level::Caps | Level::Ceilings) {
        add("max_intents_per_hour", json!(1_000_000_000_000u64));
        add("max_intents_per_day", json!(1_000_000_000_000u64));
        add("on_breach", json!("block"));
    }
    if matches!(level, Level::Ceilings) {
        add("max_cost_usd_per_day", json!(1.0e9));
        add("max_cost_usd", json!(1.0e9));
    }
    p
}

fn record(policy: serde_json::Value) -> bytes::Bytes {
    let rec = json!({
        "policy": policy,
        "by": "mesh-bench",
        "at_unix_ms": mesh_schemas::now_unix_ms(),
    });
    bytes::Bytes::from(rec.to_string())
}

async fn measure_policy(params: &Params, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    progress("policy: probing the gateway for policy enforcement");
    let stage = Stage::start(params, env, params.agents).await?;
    let objects = stage.mesh_objects().await?;
    let gws = stage
        .gateways(env, &objects, &["gw-policy".to_string()])
        .await?;
    let kv = match stage.js.get_key_value(BUCKET).await {
        Ok(kv) => kv,
        Err(_) => {
            report.note(format!(
                "policy_cost_ratio: null — the gateway under test creates no {BUCKET} bucket, so it has no policies yet"
            ));
            report.set("policy_cost_ratio", None);
            return stop_all(report, gws).await;
        }
    };
    if !probe(&stage, &kv).await? {
        report.note(
            "policy_cost_ratio: null — the gateway under test does not enforce policies (a probe intent with a denied action was delivered, not rejected)",
        );
        report.set("policy_cost_ratio", None);
        return stop_all(report, gws).await;
    }

    let mut publisher = stage.publisher(params, Route::Mesh, 41).await?;
    let keys: Vec<String> = (0..params.agents)
        .map(traffic::agent)
        .chain((0..params.senders).map(traffic::sender))
        .collect();
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..params.rounds {
        set_policies(&kv, &keys, None).await?;
        let w = closed(params, &stage, &gws[0], &mut publisher).await;
        check(report, "no policies", &w);
        without.push(w.delivered_per_s);
        set_policies(&kv, &keys, Some(Level::Ceilings)).await?;
        let w = closed(params, &stage, &gws[0], &mut publisher).await;
        check(report, "policies on every agent", &w);
        with.push(w.delivered_per_s);
        record_cpu(report, "_policies", &w);
        progress(format!(
            "policy round {round}: {:.0}/s without, {:.0}/s with",
            without[round], with[round]
        ));
    }
    // What each kind of check costs: each level against a window without policies just before.
    let levels: &[Level] = if params.policy_breakdown {
        &[Level::Actions, Level::Rate, Level::Caps]
    } else {
        &[]
    };
    for &level in levels {
        set_policies(&kv, &keys, None).await?;
        let none = closed(params, &stage, &gws[0], &mut publisher).await;
        set_policies(&kv, &keys, Some(level)).await?;
        let w = closed(params, &stage, &gws[0], &mut publisher).await;
        check(report, &format!("policies ({})", level.key()), &w);
        report.set(
            format!("throughput_policy_{}_per_s", level.key()),
            Some(w.delivered_per_s),
        );
        report.set(
            format!("policy_cost_ratio_{}", level.key()),
            (none.delivered_per_s > 0.0).then(|| w.delivered_per_s / none.delivered_per_s),
        );
        progress(format!(
            "policy {}: {:.0}/s against {:.0}/s without",
            level.key(),
            w.delivered_per_s,
            none.delivered_per_s
        ));
    }
    set_policies(&kv, &keys, None).await?;
    stop_all(report, gws).await?;
    let (none, all) = (median(without), median(with));
    report.set("throughput_no_policies_per_s", none);
    report.set("throughput_with_policies_per_s", all);
    report.set("throughput_policy_ceilings_per_s", all);
    report.set(
        "policy_cost_ratio",
        all.zip(none).filter(|(_, n)| *n > 0.0).map(|(a, n)| a / n),
    );
    Ok(())
}

async fn closed(
    params: &Params,
    stage: &Stage,
    gateway: &crate::child::ChildProc,
    publisher: &mut crate::load::Publisher,
) -> measure::Window {
    let mut spec = stage.spec(
        params,
        stage.closed(params),
        params.measure,
        Some(("gateway", gateway)),
    );
    // A gateway slowed down by policies takes a while to work off the backlog; the next
    // window must not start with it.
    spec.drain = std::time::Duration::from_secs(60);
    measure::window(publisher, &stage.agents, spec).await
}

/// Whether the gateway rejects an intent whose action the sender's policy denies.
async fn probe(stage: &Stage, kv: &async_nats::jetstream::kv::Store) -> anyhow::Result<bool> {
    let sender = "probe";
    let mut rejected = stage
        .client
        .subscribe(format!("mesh.agent.{sender}.rejected"))
        .await
        .context("subscribe to rejections")?;
    kv.put(sender, record(json!({ "deny_send": ["bench.denied"] })))
        .await
        .context("cannot write the probe policy")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stage
        .js
        .publish(
            format!("mesh.intent.{sender}.{}.bench.denied", traffic::agent(0)),
            traffic::payload(16),
        )
        .await
        .context("probe publish")?
        .await
        .context("probe PubAck")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = tokio::time::timeout_at(deadline.into(), rejected.next())
        .await
        .ok()
        .flatten()
        .is_some();
    let _ = kv.delete(sender).await;
    Ok(got)
}

/// Writes the policy of `level` for every key, or deletes them all (`None`); then waits two
/// seconds, as the contract gives every replica a second to apply a change.
async fn set_policies(
    kv: &async_nats::jetstream::kv::Store,
    keys: &[String],
    level: Option<Level>,
) -> anyhow::Result<()> {
    for k in keys {
        match level {
            Some(level) => {
                kv.put(k, record(generous_policy(level)))
                    .await
                    .with_context(|| format!("cannot write the policy of {k}"))?;
            }
            None => {
                let _ = kv.delete(k).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}
