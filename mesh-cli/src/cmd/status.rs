//! `mesh-cli status`: every known agent (seen by a gateway as a sender or a recipient, or with a
//! kill-flag key, an inbound consumer `in_<id>` or a health record) with its state, health, live
//! instances, last heartbeat, cost today, intents this hour, the intents waiting for it, how
//! many of its intents were rejected, and when it last sent and received an intent; then the
//! gateway replicas. Reads only; creates nothing.
//!
//! Each bucket is read in one pass ([`scan::latest`]), not key by key, so the table stays
//! quick at 10,000 agents.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::TryStreamExt;
use mesh_schemas::{ActivityRecord, AgentId, HealthRecord, HealthState, KillRecord, KillState};
use serde::Serialize;

use crate::error::CliError;
use crate::fence;
use crate::mesh::Mesh;
use crate::output;
use crate::retry;
use crate::scan;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

/// Up to this many agents, `status` counts the pending intents of every agent; above it, only
/// of killed ones (the others show `-`).
const COUNT_ALL_PENDING_UP_TO: usize = 200;

/// How long the counts of waiting intents retry, together, while JetStream does not answer.
const COUNT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// One agent's line.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct AgentStatus {
    pub agent: String,
    /// `active`, `killed`, or `unreadable` (a kill record that cannot be decoded: gateways treat
    /// the agent as killed).
    pub state: String,
    /// The reason of the last kill or resume.
    pub reason: String,
    /// Who wrote the flag.
    pub by: String,
    /// When the flag was written.
    pub since_unix_ms: Option<u64>,
    /// Whether the inbound consumer is paused (the kill hold); `None` without a consumer.
    pub held: Option<bool>,
    /// Intents waiting for the agent: its parked consumer's pending plus unacknowledged, or for a
    /// killed agent not parked yet, its intents after the shared lane's ack floor; `None` for an
    /// agent whose work flows on the shared lane.
    pub pending: Option<u64>,
    /// Rejections of the agent's intents in the audit trail.
    pub rejected: u64,
    /// `healthy`, `degraded`, `unreachable`, `killed` (the kill flag says so) or `unknown`
    /// (no health record: never heard from, or not since the last resume).
    pub health: String,
    /// Instances heard from within `unreachable_after`, from the health record.
    pub instances: Option<u32>,
    /// The last heartbeat of any instance, from the health record.
    pub last_heartbeat_unix_ms: Option<u64>,
    /// When the leading gateway replica last wrote the health record.
    pub health_at_unix_ms: Option<u64>,
    /// Cost today: `cost_counted_today_usd` plus `cost_reported_usd`.
    pub cost_today_usd: Option<f64>,
    /// `Mesh-Cost` of the agent's intents counted today (UTC), while it has a cost ceiling.
    pub cost_counted_today_usd: Option<f64>,
    /// `Mesh-Cost` counted since the counters were last reset (by resume).
    pub cost_counted_total_usd: Option<f64>,
    /// Cost its instances reported on heartbeats (`Mesh-Cost-Total`), from the health record.
    pub cost_reported_usd: Option<f64>,
    /// Intents claimed this UTC hour, while it has `max_intents_per_hour`. Gateways claim in
    /// small blocks before delivering, so this can run ahead of deliveries by a few.
    pub intents_this_hour: Option<u64>,
    /// Intents claimed today (UTC), while it has `max_intents_per_day`.
    pub intents_today: Option<u64>,
    /// When it last published an intent that a gateway took in (from `mesh-activity`).
    pub last_sent_unix_ms: Option<u64>,
    /// When an intent to it was last published, delivered or not.
    pub last_addressed_unix_ms: Option<u64>,
    /// When it last acknowledged a delivery.
    pub last_received_unix_ms: Option<u64>,
}

/// One gateway replica's line.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GatewayStatus {
    pub id: String,
    pub host: String,
    pub version: String,
    pub pid: u32,
    pub started_unix_ms: u64,
    /// Its last presence refresh.
    pub at_unix_ms: u64,
    pub live: bool,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub agents: Vec<AgentStatus>,
    pub gateways: Vec<GatewayStatus>,
}

pub async fn run(_args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let status = read(&mesh).await?;
    if ctx.out.is_json() {
        ctx.out.json(&status)?;
        return Ok(());
    }
    let now = mesh_schemas::now_unix_ms();
    if status.agents.is_empty() {
        ctx.out.line("no agents yet")?;
    } else {
        let rows: Vec<Vec<String>> = status.agents.iter().map(|a| agent_row(a, now)).collect();
        ctx.out.table(
            &[
                "AGENT",
                "STATE",
                "HEALTH",
                "INST",
                "HEARTBEAT",
                "COST TODAY",
                "INTENTS/H",
                "PENDING",
                "HELD",
                "REJECTED",
                "LAST SENT",
                "LAST RECEIVED",
                "SINCE",
                "REASON",
            ],
            &rows,
        )?;
    }
    ctx.out.line("")?;
    if status.gateways.is_empty() {
        ctx.out.line("no gateway replicas")?;
    } else {
        let rows: Vec<Vec<String>> = status
            .gateways
            .iter()
            .map(|g| {
                vec![
                    g.id.clone(),
                    g.host.clone(),
                    g.version.clone(),
                    g.pid.to_string(),
                    output::age(now, g.at_unix_ms),
                    if g.live { "live" } else { "dead" }.to_string(),
                ]
            })
            .collect();
        ctx.out.table(
            &["GATEWAY", "HOST", "VERSION", "PID", "SEEN", "STATE"],
            &rows,
        )?;
    }
    Ok(())
}

fn agent_row(a: &AgentStatus, now: u64) -> Vec<String> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    vec![
        a.agent.clone(),
        a.state.clone(),
        a.health.clone(),
        opt(a.instances.map(|n| n.to_string())),
        opt(a
            .last_heartbeat_unix_ms
            .map(|t| format!("{} ago", output::age(now, t)))),
        opt(a.cost_today_usd.map(|c| format!("${c:.2}"))),
        opt(a.intents_this_hour.map(|n| n.to_string())),
        opt(a.pending.map(|p| p.to_string())),
        opt(a.held.map(|h| if h { "yes" } else { "no" }.to_string())),
        a.rejected.to_string(),
        opt(a
            .last_sent_unix_ms
            .map(|t| format!("{} ago", output::age(now, t)))),
        opt(a
            .last_received_unix_ms
            .map(|t| format!("{} ago", output::age(now, t)))),
        opt(a
            .since_unix_ms
            .map(|t| format!("{} ago", output::age(now, t)))),
        a.reason.clone(),
    ]
}

/// Reads the report from the kill bucket, the inbound consumers, the audit stream's subject
/// counts and the gateways bucket. Objects that do not exist yet contribute nothing.
pub async fn read(mesh: &Mesh) -> Result<Status, CliError> {
    let names = &mesh.cfg.names;
    let mut agents: BTreeMap<String, AgentStatus> = BTreeMap::new();

    if let Some(kill) = mesh.bucket(&names.kill_bucket).await? {
        for (key, value) in scan::latest(&mesh.client, &kill).await? {
            let a = slot(&mut agents, &key);
            match mesh_schemas::decode::<KillRecord>(&value) {
                Ok(rec) => {
                    a.state = match rec.state {
                        KillState::Killed => "killed",
                        _ => "active",
                    }
                    .to_string();
                    a.reason = rec.reason;
                    a.by = rec.by;
                    a.since_unix_ms = Some(rec.at_unix_ms);
                }
                Err(e) => {
                    a.state = "unreadable".to_string();
                    a.reason = format!("kill record cannot be decoded: {e}");
                }
            }
        }
    }

    if let Some(activity) = mesh.bucket(&names.activity_bucket).await? {
        for (key, value) in scan::latest(&mesh.client, &activity).await? {
            match mesh_schemas::decode::<ActivityRecord>(&value) {
                Ok(rec) if AgentId::new(&rec.agent).is_ok() => {
                    let a = slot(&mut agents, &rec.agent);
                    // Each replica writes its own record: the latest of each wins.
                    a.last_sent_unix_ms = a.last_sent_unix_ms.max(rec.last_sent_unix_ms);
                    a.last_addressed_unix_ms =
                        a.last_addressed_unix_ms.max(rec.last_addressed_unix_ms);
                    a.last_received_unix_ms =
                        a.last_received_unix_ms.max(rec.last_received_unix_ms);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(key, error = %e, "ignoring an unreadable activity record"),
            }
        }
    }

    if let Some(intents) = mesh.stream(&names.intents_stream).await? {
        let what = || format!("could not list the consumers of {}", names.intents_stream);
        let infos: Vec<_> = intents
            .consumers()
            .try_collect()
            .await
            .map_err(|e| CliError::nats(what(), e))?;
        for info in infos {
            let Some(id) = info.name.strip_prefix("in_") else {
                continue;
            };
            if AgentId::new(id).is_err() {
                continue;
            }
            let a = slot(&mut agents, id);
            a.pending = Some(info.num_pending + info.num_ack_pending as u64);
            a.held = Some(info.paused);
        }
        // Agents that are not parked have their waiting intents counted too (a short-lived
        // consumer each): always for killed agents, which is what an operator looks for, and
        // for every agent in a mesh small enough for that to stay quick.
        let gw = mesh.cfg.gateway_config();
        let everyone = agents.len() <= COUNT_ALL_PENDING_UP_TO;
        // Counting creates a short-lived consumer, which times out while a cluster elects
        // (a node just lost or rejoining): all counts together retry for this long.
        let count_deadline = tokio::time::Instant::now() + COUNT_RETRY_FOR;
        for (id, a) in agents.iter_mut() {
            if a.pending.is_some() || !(everyone || a.state == "killed") {
                continue;
            }
            let Ok(agent) = AgentId::new(id.as_str()) else {
                continue;
            };
            let count = retry::until_while(
                count_deadline,
                "count pending intents",
                |e: &mesh_gateway::setup::SetupError| e.is_retryable(),
                || mesh_gateway::setup::pending_for(&intents, &gw, &agent),
            )
            .await;
            match count {
                Ok(n) => {
                    a.pending = Some(n);
                    // Not parked: its work is held exactly when the flag says killed.
                    a.held.get_or_insert(a.state == "killed");
                }
                Err(gave_up) => {
                    tracing::warn!(agent = %id, attempts = gave_up.attempts, error = %gave_up.last, "could not count pending intents; shown as unknown")
                }
            }
        }
    }

    if let Some(audit) = mesh.stream(&names.audit_stream).await? {
        let what = || format!("could not count rejections in {}", names.audit_stream);
        let filter = mesh.subjects.audit("reject", "*");
        let counts: Vec<(String, usize)> = audit
            .info_with_subjects(&filter)
            .await
            .map_err(|e| CliError::nats(what(), e))?
            .try_collect()
            .await
            .map_err(|e| CliError::nats(what(), e))?;
        for (subject, count) in counts {
            let Some(id) = subject.rsplit('.').next() else {
                continue;
            };
            let a = slot(&mut agents, id);
            a.rejected = count as u64;
        }
    }

    if let Some(health) = mesh.bucket(&names.health_bucket).await? {
        for (key, value) in scan::latest(&mesh.client, &health).await? {
            if AgentId::new(&key).is_err() {
                continue;
            }
            match mesh_schemas::decode::<HealthRecord>(&value) {
                Ok(rec) => {
                    let a = slot(&mut agents, &key);
                    a.health = rec.state.as_str().to_string();
                    a.instances = Some(rec.instances);
                    a.last_heartbeat_unix_ms =
                        (rec.last_heartbeat_unix_ms > 0).then_some(rec.last_heartbeat_unix_ms);
                    a.health_at_unix_ms = Some(rec.at_unix_ms);
                    a.cost_reported_usd = Some(rec.reported_cost_usd);
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "ignoring an unreadable health record");
                    slot(&mut agents, &key);
                }
            }
        }
    }

    if let Some(counters) = mesh.bucket(&names.counters_bucket).await? {
        let all: HashMap<String, Bytes> = scan::latest(&mesh.client, &counters)
            .await?
            .into_iter()
            .collect();
        for a in agents.values_mut() {
            let Ok(id) = AgentId::new(&a.agent) else {
                continue;
            };
            let c = crate::counters::current_in(&all, &id);
            a.intents_this_hour = c.intents_this_hour;
            a.intents_today = c.intents_today;
            a.cost_counted_today_usd = c.cost_counted_today_usd;
            a.cost_counted_total_usd = c.cost_counted_total_usd;
        }
    }

    for a in agents.values_mut() {
        // The kill flag wins; a record that says killed while the flag does not is from
        // before a resume, and health starts again from unknown.
        let killed = a.state != "active";
        if killed {
            a.health = HealthState::Killed.as_str().to_string();
        } else if a.health == HealthState::Killed.as_str() {
            a.health = HealthState::Unknown.as_str().to_string();
        }
        a.cost_today_usd = match (a.cost_counted_today_usd, a.cost_reported_usd) {
            (None, None) => None,
            (c, r) => Some(c.unwrap_or(0.0) + r.unwrap_or(0.0)),
        };
    }

    let mut gateways = Vec::new();
    if let Some(store) = mesh.bucket(&names.gateways_bucket).await? {
        let now = mesh_schemas::now_unix_ms();
        for p in fence::presences(&store).await? {
            gateways.push(GatewayStatus {
                live: p.is_live(now),
                id: p.id,
                host: p.host,
                version: p.version,
                pid: p.pid,
                started_unix_ms: p.started_unix_ms,
                at_unix_ms: p.at_unix_ms,
            });
        }
    }

    Ok(Status {
        agents: agents.into_values().collect(),
        gateways,
    })
}

/// The line of agent `id`, created as `active` on first sight.
fn slot<'a>(agents: &'a mut BTreeMap<String, AgentStatus>, id: &str) -> &'a mut AgentStatus {
    agents.entry(id.to_string()).or_insert_with(|| AgentStatus {
        agent: id.to_string(),
        state: "active".to_string(),
        health: HealthState::Unknown.as_str().to_string(),
        ..AgentStatus::default()
    })
}
