//! `mesh-cli kill <id> --reason R`: writes the kill flag, holds the agent's inbound intents and
//! returns when every live gateway replica has confirmed (exit 3 when some did not in time).

use std::time::Duration;

use mesh_schemas::{AgentId, KillState};

use crate::error::CliError;
use crate::mesh::Mesh;
use crate::switch::Switch;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The agent to kill (A-Z a-z 0-9 _ -, 1 to 64 characters).
    #[arg(value_parser = super::agent_id)]
    pub agent: AgentId,
    /// Why: recorded in the audit trail and echoed in every rejection while killed.
    #[arg(long)]
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
        state: KillState::Killed,
        reason: args.reason,
        by,
        timeout: ctx.cfg.fence_timeout,
    };
    apply_and_report(switch, "kill", ctx).await
}

/// Runs a switch, prints its outcome and turns an incomplete fence into exit code 3.
pub(crate) async fn apply_and_report(
    switch: Switch,
    action: &'static str,
    ctx: &mut Ctx,
) -> Result<(), CliError> {
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let outcome = switch.apply(&mesh).await?;
    if ctx.out.is_json() {
        ctx.out.json(&outcome)?;
    } else {
        ctx.out.line(&outcome.summary())?;
    }
    if outcome.confirmed {
        Ok(())
    } else {
        Err(CliError::Unconfirmed {
            action,
            agent: outcome.agent.to_string(),
            live: outcome.replicas.live.len(),
            missing: outcome.replicas.missing.clone(),
            timeout: switch.timeout,
        })
    }
}
