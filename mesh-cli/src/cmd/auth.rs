//! `mesh-cli auth init --dir DIR`: the identities of a secured mesh, for a platform team's own
//! NATS servers. Writes the keys, the gateway's, operator's and system user's credentials and
//! `nats-auth.conf`, the include file their servers need (operator, system account, account
//! JWT preloads). `mesh-cli up` does the same for its local server.

use std::path::PathBuf;

use mesh_auth::AuthDir;
use serde::Serialize;

use crate::error::CliError;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Create an auth directory: keys (0600), gateway/operator/system credentials and the
    /// nats-server include file. Refuses a directory that already holds one.
    Init {
        /// Where (created, mode 0700). Keep it with the operator, never on an agent's machine.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// What `auth init` wrote.
#[derive(Debug, Serialize)]
pub struct Initialised {
    pub dir: PathBuf,
    pub server_include: PathBuf,
    pub gateway_creds: PathBuf,
    pub operator_creds: PathBuf,
    pub system_creds: PathBuf,
    pub operator: String,
    pub mesh_account: String,
    pub system_account: String,
    pub prefix: String,
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let Action::Init { dir } = args.action;
    let auth = AuthDir::init(&dir, &ctx.cfg.names.prefix)?;
    let info = auth.info();
    let done = Initialised {
        dir: dir.clone(),
        server_include: auth.server_include(),
        gateway_creds: auth.gateway_creds(),
        operator_creds: auth.operator_creds(),
        system_creds: auth.system_creds(),
        operator: info.operator.clone(),
        mesh_account: info.mesh_account.clone(),
        system_account: info.system_account.clone(),
        prefix: info.prefix.clone(),
    };
    if ctx.out.is_json() {
        ctx.out.json(&done)?;
        return Ok(());
    }
    let out = &mut ctx.out;
    out.line(&format!(
        "Auth directory {} created (keep it secret: it can mint any identity).",
        dir.display()
    ))?;
    out.line("")?;
    out.line(
        "1. On every nats-server of the mesh (each node of a cluster), copy nats-auth.conf next to",
    )?;
    out.line("   its config and add:")?;
    out.line("     include \"nats-auth.conf\"")?;
    out.line(
        "     resolver { type: full, dir: \"./jwt\", allow_delete: false, interval: \"2m\" }",
    )?;
    out.line("   then restart it once. Agents added later need no change on the servers.")?;
    out.line(&format!(
        "2. Gateways:  MESH_NATS_CREDS={}",
        done.gateway_creds.display()
    ))?;
    out.line(&format!(
        "3. Operators: MESH_NATS_CREDS={} MESH_AUTH_DIR={}",
        done.operator_creds.display(),
        dir.display()
    ))?;
    out.line("4. Each agent: mesh-cli agent add <id> --out <id>.creds")?;
    Ok(())
}
