//! `mesh-cli agent add|revoke|list`: the credentials of agents.
//!
//! `add` signs a user JWT with the agents' scoped signing key from the auth directory and
//! writes a standard `.creds` file; the server needs no change to accept it. `revoke` re-signs
//! the mesh account with a revocation and pushes it as the system user: the server closes the
//! agent's connections and refuses new ones. Both land in the audit trail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_auth::authdir::now;
use mesh_auth::{push, AuthDir, Issued};
use mesh_schemas::{AuditEvent, AuditKind};
use serde::Serialize;

use crate::config::CliConfig;
use crate::error::CliError;
use crate::mesh::Mesh;
use crate::retry;
use crate::{output, Ctx};

/// How long a push of the account update may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    /// The auth directory (from `mesh-cli up` or `mesh-cli auth init`); also MESH_AUTH_DIR
    /// or `auth_dir` in --config.
    #[arg(long, global = true, value_name = "DIR")]
    pub auth_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Issue credentials to an agent: a standard NATS .creds file, usable at once by any
    /// client (nats CLI --creds, nats-py, async-nats, mesh-agent), with no server change.
    Add {
        /// The agent (A-Z a-z 0-9 _ -, 1 to 64 characters, not starting with _).
        agent: String,
        /// Write the .creds file here (mode 0600) instead of to standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Let the credentials expire after this long (e.g. 30d); default: no expiry.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Overwrite --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Revoke every credential of an agent: its connections are closed and new ones refused.
    /// Its held work stays in JetStream.
    Revoke {
        agent: String,
        /// Why: recorded in the audit trail.
        #[arg(long, default_value = "credentials revoked")]
        reason: String,
        /// Only this credential (its user key `U…`, from `agent list`): to rotate without a
        /// gap, add a new one first, deploy it, then revoke the old key.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Who holds credentials: every issued credential with its state.
    List,
}

/// One credential as `agent list` shows it.
#[derive(Debug, Serialize)]
pub struct Credential {
    pub agent: String,
    pub public_key: String,
    pub issued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// `active`, `revoked` or `expired`.
    pub state: &'static str,
}

impl Credential {
    fn new(agent: &str, i: &Issued, now: i64) -> Self {
        let state = if i.revoked_at.is_some() {
            "revoked"
        } else if i.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        };
        Credential {
            agent: agent.to_string(),
            public_key: i.public_key.clone(),
            issued_at: i.issued_at,
            expires_at: i.expires_at,
            revoked_at: i.revoked_at,
            state,
        }
    }
}

/// What `agent revoke` did.
#[derive(Debug, Serialize)]
pub struct Revoked {
    pub agent: String,
    /// Keys revoked by this call (empty when all were already revoked: the update is pushed
    /// again all the same).
    pub revoked: Vec<String>,
    pub pushed: bool,
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let dir = open(&ctx.cfg, args.auth_dir.as_deref())?;
    match args.action {
        Action::Add {
            agent,
            out,
            expires,
            force,
        } => add(&dir, &agent, out, expires, force, ctx).await,
        Action::Revoke { agent, reason, key } => {
            let by = super::operator(&ctx.env);
            let revoked = revoke(&dir, &ctx.cfg, &agent, key.as_deref(), &reason, &by).await?;
            if ctx.out.is_json() {
                ctx.out.json(&revoked)?;
            } else {
                ctx.out.line(&format!(
                    "revoked {} credential(s) of {agent}; NATS closed its connections and refuses new ones",
                    revoked.revoked.len()
                ))?;
            }
            Ok(())
        }
        Action::List => list(&dir, ctx),
    }
}

/// The auth directory from the flag, else the configuration.
pub fn open(cfg: &CliConfig, flag: Option<&Path>) -> Result<AuthDir, CliError> {
    let path = flag.or(cfg.auth_dir.as_deref()).ok_or_else(|| {
        CliError::Usage(
            "no auth directory: pass --auth-dir DIR or set MESH_AUTH_DIR (`mesh-cli up` prints \
             it; `mesh-cli auth init --dir DIR` creates one)"
                .into(),
        )
    })?;
    Ok(AuthDir::open(path)?)
}

async fn add(
    dir: &AuthDir,
    agent: &str,
    out: Option<PathBuf>,
    expires: Option<Duration>,
    force: bool,
    ctx: &mut Ctx,
) -> Result<(), CliError> {
    if let Some(path) = &out {
        if path.exists() && !force {
            return Err(CliError::Usage(format!(
                "{} exists; pass --force to overwrite it",
                path.display()
            )));
        }
    }
    let expires_at = expires.map(|d| now() + d.as_secs() as i64);
    let new = dir.add_agent(agent, expires_at)?;
    if let Some(path) = &out {
        write_creds(path, &new.creds)?;
    }
    // The credential is issued whether or not NATS answers; the record is best effort.
    let mut event = AuditEvent::new(
        AuditKind::Credentials,
        agent,
        super::operator(&ctx.env),
        "credentials issued",
    );
    event.detail = Some(
        serde_json::json!({"issued": [&new.issued.public_key], "expires_at": expires_at})
            .to_string(),
    );
    if let Err(e) = audit(
        &ctx.cfg,
        &event,
        &format!("creds-{}", new.issued.public_key),
    )
    .await
    {
        output::note(&format!(
            "warning: the credentials are issued, but could not be recorded in the audit trail: {e:#}"
        ));
    }
    let credential = Credential::new(agent, &new.issued, now());
    match (&out, ctx.out.is_json()) {
        (Some(path), true) => ctx.out.json(&serde_json::json!({
            "credential": credential, "file": path,
            "inbox_prefix": mesh_auth::permissions::agent_inbox(agent),
        }))?,
        (None, true) => ctx.out.json(&serde_json::json!({
            "credential": credential, "creds": new.creds,
            "inbox_prefix": mesh_auth::permissions::agent_inbox(agent),
        }))?,
        (Some(path), false) => {
            ctx.out.line(&format!(
                "issued credentials to {agent} ({}) in {}",
                new.issued.public_key,
                path.display()
            ))?;
            ctx.out.line(&format!(
                "connect with them and the inbox prefix {} (nats-py: inbox_prefix=, async-nats: custom_inbox_prefix)",
                mesh_auth::permissions::agent_inbox(agent)
            ))?;
        }
        (None, false) => ctx.out.line(new.creds.trim_end())?,
    }
    Ok(())
}

/// Revokes every credential of `agent` (or the one with user key `key`), pushes the account
/// update, and records it.
pub async fn revoke(
    dir: &AuthDir,
    cfg: &CliConfig,
    agent: &str,
    key: Option<&str>,
    reason: &str,
    by: &str,
) -> Result<Revoked, CliError> {
    let (revoked, account) = match key {
        Some(key) => dir.revoke_key(agent, key)?,
        None => dir.revoke_agent(agent)?,
    };
    let system_cfg = CliConfig {
        nats_creds: Some(dir.system_creds()),
        ..cfg.clone()
    };
    let system = crate::connect::connect(&system_cfg).await?;
    push::push_account(&system, &account, PUSH_TIMEOUT).await?;
    let keys: Vec<String> = revoked.iter().map(|i| i.public_key.clone()).collect();
    let mut event = AuditEvent::new(AuditKind::Credentials, agent, by, reason);
    event.detail = Some(serde_json::json!({ "revoked": keys }).to_string());
    audit(
        cfg,
        &event,
        &format!("revoke-{agent}-{}", mesh_schemas::now_unix_ms()),
    )
    .await?;
    Ok(Revoked {
        agent: agent.to_string(),
        revoked: keys,
        pushed: true,
    })
}

/// Records `event` in the audit trail, retrying within `fence_timeout` as kill and policy
/// changes do (a cluster electing after a node loss).
async fn audit(cfg: &CliConfig, event: &AuditEvent, msg_id: &str) -> Result<(), CliError> {
    let mesh = Mesh::open(cfg.clone()).await?;
    let deadline = tokio::time::Instant::now() + cfg.fence_timeout;
    let js = mesh.js_within(retry::ATTEMPT_TIMEOUT);
    let gateway_config = cfg.gateway_config();
    retry::until_while(
        deadline,
        "record it in the audit trail",
        retry::transient,
        || async {
            mesh_gateway::setup::ensure(&js, &gateway_config).await?;
            crate::policies::publish_audit(&mesh, &js, event, msg_id).await
        },
    )
    .await
    .map_err(|g| g.last)
}

fn list(dir: &AuthDir, ctx: &mut Ctx) -> Result<(), CliError> {
    let now = now();
    let registry = dir.registry()?;
    let all: Vec<Credential> = registry
        .agents
        .iter()
        .flat_map(|(agent, list)| list.iter().map(move |i| Credential::new(agent, i, now)))
        .collect();
    if ctx.out.is_json() {
        ctx.out.json(&all)?;
        return Ok(());
    }
    if all.is_empty() {
        ctx.out
            .line("no agent holds credentials yet; issue some with `mesh-cli agent add <id>`")?;
        return Ok(());
    }
    let time = |t: Option<i64>| {
        t.map_or("-".to_string(), |t| {
            output::timestamp(t.max(0) as u64 * 1000)
        })
    };
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|c| {
            vec![
                c.agent.clone(),
                c.state.to_string(),
                c.public_key.clone(),
                output::timestamp(c.issued_at.max(0) as u64 * 1000),
                time(c.expires_at),
                time(c.revoked_at),
            ]
        })
        .collect();
    ctx.out.table(
        &["AGENT", "STATE", "KEY", "ISSUED", "EXPIRES", "REVOKED"],
        &rows,
    )?;
    Ok(())
}

fn write_creds(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CliError::Nats {
        what: format!("could not write {}", path.display()),
        source: Box::new(source),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}
