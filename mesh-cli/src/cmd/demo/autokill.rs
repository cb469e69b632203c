//! Step 6 of the demo (contract §8): after the resume, the operator gives the deployer a policy
//! (`max_intents_per_hour`, `max_cost_usd`); the deployer misbehaves again, sending as fast as
//! it can with a `Mesh-Cost` on every intent, and the gateways kill it on their own. The step
//! waits for the kill record signed `policy:…`, shows the `autokill` event and the status row,
//! and checks that infra received no more than the cap from the deployer in this window.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_agent::SendOptions;
use mesh_schemas::{KillRecord, KillState, Policy};

use super::{check, id, say, status_line, wait_until, Args, Counts};
use crate::error::CliError;
use crate::events::{self, Filter};
use crate::mesh::Mesh;
use crate::policies::Edit;
use crate::Ctx;

/// What each of the rogue's intents costs, in USD.
const COST_PER_INTENT: f64 = 0.25;
/// The deployer's `max_cost_usd` in this step.
const MAX_COST_USD: f64 = 50.0;

pub(super) async fn run(
    args: &Args,
    ctx: &mut Ctx,
    mesh: &Mesh,
    agents: &super::Agents,
    counts: &Arc<Counts>,
) -> Result<(), CliError> {
    let cap = args.cap;
    let deployer = id("deployer");
    say(
        ctx,
        &format!(
            "\n6. operator: mesh-cli policy set deployer --max-intents-per-hour {cap} \
             --max-cost-usd {MAX_COST_USD}"
        ),
    )?;
    let policy = Policy {
        max_intents_per_hour: Some(cap),
        max_cost_usd: Some(MAX_COST_USD),
        ..Policy::default()
    };
    policy
        .validate()
        .map_err(|e| CliError::DemoInvariant(format!("the demo's policy is valid: {e}")))?;
    let change = Edit {
        key: deployer.as_str(),
        by: "demo-operator",
        reason: "policy set".to_string(),
        timeout: Duration::from_secs(5),
    }
    .apply(mesh, |_| Ok(Some(policy.clone())))
    .await?;
    check(change.confirmed, "every live replica applied the policy")?;
    say(ctx, &format!("   {}", change.summary()))?;

    // The deployer misbehaves again: as fast as it can, each intent with a cost.
    say(
        ctx,
        &format!(
            "   the deployer floods infra again, each intent with Mesh-Cost {COST_PER_INTENT}; \
             no operator is watching"
        ),
    )?;
    let hour_at_start = hour();
    let infra_before = counts.infra_from_deployer.load(Ordering::SeqCst);
    let rogue = agents.connect(deployer.as_str()).await?;
    let rejected = Arc::new(AtomicU64::new(0));
    let mut rejections = rogue
        .rejections()
        .await
        .map_err(|e| CliError::nats("follow the deployer's rejections", e))?;
    let listener = {
        let rejected = rejected.clone();
        tokio::spawn(async move {
            while rejections.next().await.is_some() {
                rejected.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded, so that a mesh that never kills does not flood forever: the check fails instead.
    let most = cap * 10 + 1000;
    let sender = {
        let (sent, stop) = (sent.clone(), stop.clone());
        tokio::spawn(async move {
            let infra = id("infra");
            while !stop.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) < most {
                let n = sent.load(Ordering::SeqCst);
                let options = SendOptions::default().cost_usd(COST_PER_INTENT);
                if rogue
                    .send_with(&infra, "deploy.service", format!("again-{n}"), options)
                    .await
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let started = Instant::now();
    let record = wait_for_autokill(mesh, &deployer).await;
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = sender.await;
    let record = record?;
    let sent = sent.load(Ordering::SeqCst);
    say(
        ctx,
        &format!(
            "   killed automatically {:.0} ms after the flood began, by {}: {}",
            took.as_secs_f64() * 1000.0,
            record.by,
            record.reason
        ),
    )?;

    // Every intent of the flood ends delivered or rejected.
    let c = counts.clone();
    let r = rejected.clone();
    wait_until(
        "every intent of the second flood is delivered or rejected",
        || {
            c.infra_from_deployer.load(Ordering::SeqCst) - infra_before + r.load(Ordering::SeqCst)
                >= sent
        },
    )
    .await?;
    listener.abort();
    let delivered = counts.infra_from_deployer.load(Ordering::SeqCst) - infra_before;
    let rejected = rejected.load(Ordering::SeqCst);
    // From the last delivery (the cap-th intent) to the kill record the gateway wrote.
    let last_delivery = counts.infra_from_deployer_at_ms.load(Ordering::SeqCst);
    say(
        ctx,
        &format!(
            "   the kill record was written {} ms after infra received the deployer's last \
             allowed intent",
            record.at_unix_ms.saturating_sub(last_delivery)
        ),
    )?;
    // A cap holds per UTC clock hour: if an hour ended during the step, each window has its own.
    let windows = hour() - hour_at_start + 1;
    check(
        delivered <= cap * windows,
        format!(
            "infra received {delivered} deployer intents in this window, over the cap of {cap}"
        ),
    )?;
    check(
        delivered > 0,
        "the deployer's intents up to the cap were delivered",
    )?;
    say(
        ctx,
        &format!(
            "   the deployer sent {sent}; infra received {delivered} (cap {cap}{}); rejected \
             (403, with notice and record): {rejected}",
            if windows > 1 {
                format!(" per hour; an hour ended during this step, {windows} windows")
            } else {
                String::new()
            }
        ),
    )?;

    // What the operator finds afterwards.
    say(ctx, "   mesh-cli audit --agent deployer --kind autokill:")?;
    let filter = Filter {
        agent: Some(deployer.clone()),
        kind: Some("autokill".into()),
    };
    let autokills = events::history(mesh, &filter, None, 10).await?;
    check(
        !autokills.is_empty(),
        "the automatic kill is in the audit trail",
    )?;
    for e in &autokills {
        say(
            ctx,
            &format!(
                "   audit: {} {} by {}: {} ({})",
                e.event.kind.as_str(),
                e.event.agent,
                e.event.actor,
                e.event.reason,
                e.details()
            ),
        )?;
    }
    say(ctx, "   mesh-cli status:")?;
    let status = super::super::status::read(mesh).await?;
    let row = status
        .agents
        .iter()
        .find(|a| a.agent == deployer.as_str())
        .ok_or_else(|| CliError::DemoInvariant("status lists the deployer".into()))?;
    check(
        row.state == "killed" && row.health == "killed",
        format!(
            "status shows the deployer killed (state {}, health {})",
            row.state, row.health
        ),
    )?;
    say(ctx, &format!("   {}", status_line(row)))?;
    if let Some(cost) = row.cost_counted_total_usd {
        say(
            ctx,
            &format!("   cost counted from Mesh-Cost since the resume: ${cost:.2}"),
        )?;
    }
    Ok(())
}

/// The current UTC hour since the epoch: the hourly cap's window.
fn hour() -> u64 {
    mesh_schemas::now_unix_ms() / 3_600_000
}

/// Waits until the deployer's kill flag is a kill signed by a policy.
async fn wait_for_autokill(
    mesh: &Mesh,
    deployer: &mesh_schemas::AgentId,
) -> Result<KillRecord, CliError> {
    let bucket = &mesh.cfg.names.kill_bucket;
    let kv = mesh
        .bucket(bucket)
        .await?
        .ok_or_else(|| CliError::DemoInvariant(format!("the kill bucket {bucket} exists")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = kv
            .get(deployer.as_str())
            .await
            .map_err(|e| CliError::nats(format!("could not read {bucket}[{deployer}]"), e))?;
        if let Some(rec) = value.and_then(|v| mesh_schemas::decode::<KillRecord>(&v).ok()) {
            if rec.state == KillState::Killed && rec.by.starts_with("policy:") {
                return Ok(rec);
            }
        }
        check(
            Instant::now() < deadline,
            "the policy killed the deployer within 30 s",
        )?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
