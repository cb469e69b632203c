//! `mesh-cli tail [--agent ID] [--kind K]`: audit events live as they land, until Ctrl-C.
//! With `--json`, one JSON object per line.

use mesh_schemas::AgentId;

use crate::error::CliError;
use crate::events::{Filter, Follow};
use crate::mesh::Mesh;
use crate::output;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only events about this agent.
    #[arg(long, value_parser = super::agent_id)]
    pub agent: Option<AgentId>,
    /// Only events of this kind: kill, resume, autokill, policy, observe, health, reject, stale,
    /// gateway.
    #[arg(long, value_parser = super::audit::kind)]
    pub kind: Option<String>,
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let filter = Filter {
        agent: args.agent,
        kind: args.kind,
    };
    let mut follow = Follow::start(&mesh, &filter).await?;
    output::note(&format!(
        "following {} (Ctrl-C to stop)",
        filter.subject(&mesh.subjects)
    ));
    let mut shutdown = ctx.take_shutdown();
    loop {
        let entry = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            next = follow.next() => match next {
                Some(entry) => entry?,
                None => return Ok(()),
            },
        };
        if ctx.out.is_json() {
            ctx.out.json_line(&entry)?;
        } else {
            // One line per event, the audit table's columns without a header (it scrolls).
            let row = super::audit::row(&entry);
            ctx.out.line(&row.join("  "))?;
        }
    }
}
