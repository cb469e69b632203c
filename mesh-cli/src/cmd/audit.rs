//! `mesh-cli audit [--agent ID] [--since 1h] [--kind kill] [--limit N]`: the audit trail, oldest
//! first.

use std::time::{Duration, SystemTime};

use mesh_schemas::AgentId;

use crate::error::CliError;
use crate::events::{self, Entry, Filter};
use crate::mesh::Mesh;
use crate::output;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only events about this agent.
    #[arg(long, value_parser = super::agent_id)]
    pub agent: Option<AgentId>,
    /// Only events of this kind: kill, resume, autokill, policy, observe, health, reject, stale,
    /// gateway, credentials.
    #[arg(long, value_parser = kind)]
    pub kind: Option<String>,
    /// Only events from this long ago on (e.g. 90s, 1h, 2d); all when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Show at most the last N events.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// A kind is one subject token.
pub fn kind(s: &str) -> Result<String, String> {
    AgentId::new(s).map(String::from).map_err(|_| {
        format!(
            "{s:?} is not an event kind (kill, resume, autokill, policy, observe, health, reject, \
             stale, gateway, credentials)"
        )
    })
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let filter = Filter {
        agent: args.agent,
        kind: args.kind,
    };
    let since = args.since.map(|d| {
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let entries = events::history(&mesh, &filter, since, args.limit).await?;
    if ctx.out.is_json() {
        ctx.out.json(&entries)?;
    } else if entries.is_empty() {
        output::note("no audit events match");
    } else {
        let rows: Vec<Vec<String>> = entries.iter().map(row).collect();
        ctx.out.table(&HEADERS, &rows)?;
    }
    Ok(())
}

/// The columns of an audit table.
pub const HEADERS: [&str; 6] = ["TIME", "KIND", "AGENT", "ACTOR", "REASON", "DETAILS"];

/// One audit table row.
pub fn row(e: &Entry) -> Vec<String> {
    let kind = serde_json::to_value(e.event.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    vec![
        output::timestamp(e.event.at_unix_ms),
        kind,
        e.event.agent.clone(),
        e.event.actor.clone(),
        e.event.reason.clone(),
        e.details(),
    ]
}
