//! `mesh-cli resume <id>`: clears the kill flag and releases the hold; the intents that waited
//! for the agent are delivered in order. Returns when every live gateway replica has confirmed.

use std::time::Duration;

use mesh_schemas::{AgentId, KillState};

use crate::error::CliError;
use crate::switch::Switch;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The agent to resume.
    #[arg(value_parser = super::agent_id)]
    pub agent: AgentId,
    /// Why, for the audit trail.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Who is acting; defaults to user@host.
    #[arg(long, value_name = "WHO")]
    pub by: Option<String>,
    /// How long to wait for the gateway replicas' confirmations (e.g. 5s); also
    /// MESH_FENCE_TIMEOUT.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let by = args.by.unwrap_or_else(|| super::operator(&ctx.env));
    let switch = Switch {
        agent: args.agent,
        state: KillState::Active,
        reason: args.reason,
        by,
        timeout: ctx.cfg.fence_timeout,
    };
    super::kill::apply_and_report(switch, "resume", ctx).await
}
