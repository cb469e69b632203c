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
    /// Also revoke the agent's credentials: NATS closes its connections and refuses new ones,
    /// for an agent that also talks NATS outside the mesh. Its later intents are then refused
    /// by NATS, not recorded as rejections. Needs the auth directory (--auth-dir or
    /// MESH_AUTH_DIR).
    #[arg(long)]
    pub revoke: bool,
    /// The auth directory, for --revoke.
    #[arg(long, value_name = "DIR", requires = "revoke")]
    pub auth_dir: Option<std::path::PathBuf>,
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let by = args.by.unwrap_or_else(|| super::operator(&ctx.env));
    // Open the auth directory first: a --revoke that cannot revoke fails before anything.
    let auth = if args.revoke {
        Some(super::agent::open(&ctx.cfg, args.auth_dir.as_deref())?)
    } else {
        None
    };
    let switch = Switch {
        agent: args.agent.clone(),
        state: KillState::Killed,
        reason: args.reason.clone(),
        by: by.clone(),
        timeout: ctx.cfg.fence_timeout,
    };
    let Some(auth) = auth else {
        return apply_and_report(switch, "kill", ctx).await;
    };
    // The kill flag first: it is the fast path and holds on its own.
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let outcome = switch.apply(&mesh).await?;
    let reason = format!("killed with --revoke: {}", args.reason);
    let revoked =
        super::agent::revoke(&auth, &ctx.cfg, args.agent.as_str(), None, &reason, &by).await?;
    if ctx.out.is_json() {
        let mut value = serde_json::to_value(&outcome)
            .map_err(|e| CliError::nats("could not encode the outcome", e))?;
        value["revoked"] = serde_json::to_value(&revoked)
            .map_err(|e| CliError::nats("could not encode the outcome", e))?;
        ctx.out.json(&value)?;
    } else {
        ctx.out.line(&outcome.summary())?;
        ctx.out.line(&format!(
            "revoked {} credential(s) of {}: NATS closed its connections and refuses new ones",
            revoked.revoked.len(),
            args.agent
        ))?;
    }
    outcome.verdict("kill", switch.timeout)
}

/// Runs a switch, prints its outcome and turns an incomplete one into exit code 3.
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
    outcome.verdict(action, switch.timeout)
}
