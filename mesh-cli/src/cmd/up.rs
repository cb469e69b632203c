//! `mesh-cli up`: a local mesh for trying things out. Starts nats-server with JetStream on a
//! free port with its own store dir, and one mesh-gateway (found next to mesh-cli) pointed at
//! it; prints the URL and the subjects to use; runs until Ctrl-C, then stops the gateway (it
//! drains) and the server, and deletes the store dir unless `--dir` was given.
//!
//! Secured by default: the server authenticates every connection (operator mode, full
//! resolver), the gateway and the operator get credentials of their own in `<dir>/auth`, and
//! `mesh-cli agent add <id>` issues an agent's while the server runs. `--insecure` is the open
//! mode of old, for quick experiments only.

use std::path::PathBuf;
use std::time::Duration;

use mesh_auth::connect::{Field, NatsConnection};
use serde::Serialize;
use tokio::process::Command;
use tokio::time::Instant;

use crate::config::{CliConfig, NON_CONFIG_ENV};
use crate::error::CliError;
use crate::local::{self, LocalError, Proc};
use crate::output;
use crate::Ctx;

/// How long the gateway gets to announce itself before `up` goes on without waiting.
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the gateway gets to drain on Ctrl-C (its own grace is 10 s by default).
const GATEWAY_STOP_GRACE: Duration = Duration::from_secs(15);
/// How long nats-server gets to shut down.
const NATS_STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Client port for nats-server; a free one when absent.
    #[arg(long)]
    pub port: Option<u16>,
    /// Keep the store and logs in this directory (created if needed) instead of a temporary one
    /// that is deleted on exit.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Start only nats-server (run gateways yourself).
    #[arg(long)]
    pub no_gateway: bool,
    /// Open mode: no authentication, every client may do anything, so an agent can undo its
    /// own kill. For quick experiments only.
    #[arg(long)]
    pub insecure: bool,
}

/// What `up --json` prints once everything runs.
#[derive(Debug, Serialize)]
pub struct Running {
    pub nats_url: String,
    pub dir: PathBuf,
    pub nats_pid: Option<u32>,
    pub gateway_pid: Option<u32>,
    pub logs: Vec<PathBuf>,
    pub subjects: Subjects,
    pub kill: String,
    /// Whether the server authenticates every connection.
    pub secured: bool,
    /// The auth directory (secured mode): keys and issued credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_dir: Option<PathBuf>,
    /// The operator's credentials (secured mode), for mesh-cli.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_creds: Option<PathBuf>,
    /// How to issue an agent's credentials (secured mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_agent: Option<String>,
}

/// The subjects an agent uses, with placeholders.
#[derive(Debug, Serialize)]
pub struct Subjects {
    pub send: String,
    pub inbox: String,
    pub inbox_queue_group: String,
    pub rejected: String,
    pub control: String,
    pub heartbeat: String,
}

impl Subjects {
    fn new(prefix: &str) -> Self {
        Subjects {
            send: format!("{prefix}.intent.<from>.<to>.<action>"),
            inbox: format!("{prefix}.agent.<id>.inbox"),
            inbox_queue_group: "<id>".to_string(),
            rejected: format!("{prefix}.agent.<id>.rejected"),
            control: format!("{prefix}.agent.<id>.control"),
            heartbeat: format!("{prefix}.hb.<id>"),
        }
    }
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let nats_bin = local::find_nats_server(&ctx.env, &local::search_roots())?;
    let gateway_bin = if args.no_gateway {
        None
    } else {
        Some(local::find_gateway()?)
    };
    let (dir, _temp) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| LocalError::Io {
                what: format!("create {}", dir.display()),
                source,
            })?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("mesh-up-")
                .tempdir()
                .map_err(|source| LocalError::Io {
                    what: "create a temporary directory".to_string(),
                    source,
                })?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };

    let secured = if args.insecure {
        output::note(
            "WARNING: --insecure: nats-server accepts every connection with no credentials and \
             every client may do anything. Any agent can delete its own kill flag, write into \
             another agent's inbox or send as another agent: the kill switch holds only against \
             agents that cooperate. Use it for quick experiments, never with real agents.",
        );
        None
    } else {
        Some(local::LocalAuth::prepare(&dir, &ctx.cfg.names.prefix)?)
    };
    let conf = secured.as_ref().map(|s| s.conf.as_path());
    let (mut nats, url) = local::start_nats(&nats_bin, &dir, args.port, conf).await?;
    // The local server, with its own credentials, none of the configured ones (they are for
    // another server).
    let as_role = |creds: Option<std::path::PathBuf>| {
        ctx.cfg.clone().with_connection(NatsConnection {
            creds,
            ..NatsConnection::new(&url)
        })
    };
    let gateway_cfg = as_role(secured.as_ref().map(|s| s.auth.gateway_creds()));
    let operator_creds = secured.as_ref().map(|s| s.auth.operator_creds());
    let operator_cfg = as_role(operator_creds.clone());
    let mut gateway = match &gateway_bin {
        Some(bin) => {
            let mut proc = start_gateway(bin, &gateway_cfg, &dir, 1)?;
            wait_for_gateway(&mut proc, &operator_cfg).await?;
            Some(proc)
        }
        None => None,
    };
    let auth_dir = secured.as_ref().map(|s| s.auth.root().to_path_buf());

    let running = Running {
        nats_url: url.clone(),
        dir: dir.clone(),
        nats_pid: nats.pid(),
        gateway_pid: gateway.as_ref().and_then(Proc::pid),
        logs: std::iter::once(nats.log.clone())
            .chain(gateway.as_ref().map(|g| g.log.clone()))
            .collect(),
        subjects: Subjects::new(&ctx.cfg.names.prefix),
        kill: match &operator_creds {
            Some(creds) => format!(
                "mesh-cli --nats-url {url} --creds {} kill <id> --reason \"...\"",
                creds.display()
            ),
            None => format!("mesh-cli --nats-url {url} kill <id> --reason \"...\""),
        },
        secured: secured.is_some(),
        add_agent: auth_dir.as_ref().map(|d| {
            format!(
                "mesh-cli agent add <id> --out <id>.creds --auth-dir {}",
                d.display()
            )
        }),
        auth_dir,
        operator_creds,
    };
    if ctx.out.is_json() {
        ctx.out.json(&running)?;
    } else {
        print_running(ctx, &running)?;
    }

    let mut shutdown = ctx.take_shutdown();
    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        status = nats.wait() => Err(exited(&nats, status)),
        status = wait_opt(&mut gateway) => match &gateway {
            Some(g) => Err(exited(g, status)),
            None => Ok(()),
        },
    };
    output::note("stopping ...");
    if let Some(g) = gateway {
        g.stop(GATEWAY_STOP_GRACE).await;
    }
    nats.stop(NATS_STOP_GRACE).await;
    output::note("stopped");
    result
}

fn exited(proc: &Proc, status: std::io::Result<std::process::ExitStatus>) -> CliError {
    match status {
        Ok(status) => proc.exited_error(status).into(),
        Err(source) => LocalError::Io {
            what: format!("wait for {}", proc.name),
            source,
        }
        .into(),
    }
}

/// Waits for the gateway's exit, or forever without a gateway.
async fn wait_opt(proc: &mut Option<Proc>) -> std::io::Result<std::process::ExitStatus> {
    match proc {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

/// Starts mesh-gateway with `cfg`'s NATS connection and names, logging to
/// `<dir>/mesh-gateway.log`. Variables meant for mesh-cli are not passed on; the connection
/// goes as `MESH_NATS_*` variables (replacing any inherited ones), so that no password or token
/// shows on the command line. Its streams and buckets get `replicas` copies (3 on a cluster).
pub(crate) fn start_gateway(
    bin: &std::path::Path,
    cfg: &CliConfig,
    dir: &std::path::Path,
    replicas: u8,
) -> Result<Proc, LocalError> {
    let mut cmd = Command::new(bin);
    for var in NON_CONFIG_ENV
        .iter()
        .chain(&["MESH_FENCE_TIMEOUT", "MESH_AUTH_DIR"])
    {
        cmd.env_remove(var);
    }
    for field in Field::ALL {
        cmd.env_remove(field.env());
    }
    cmd.envs(cfg.connection().env_vars());
    let n = &cfg.names;
    cmd.env("MESH_REPLICAS", replicas.to_string())
        .env("MESH_NAMES__PREFIX", &n.prefix)
        .env("MESH_NAMES__INTENTS_STREAM", &n.intents_stream)
        .env("MESH_NAMES__AUDIT_STREAM", &n.audit_stream)
        .env("MESH_NAMES__KILL_BUCKET", &n.kill_bucket)
        .env("MESH_NAMES__POLICY_BUCKET", &n.policy_bucket)
        .env("MESH_NAMES__HEALTH_BUCKET", &n.health_bucket)
        .env("MESH_NAMES__GATEWAYS_BUCKET", &n.gateways_bucket)
        .env("MESH_NAMES__COUNTERS_BUCKET", &n.counters_bucket)
        .env("MESH_NAMES__ACTIVITY_BUCKET", &n.activity_bucket);
    Proc::spawn("mesh-gateway", cmd, dir.join("mesh-gateway.log"))
}

/// Waits until the gateway has a live presence record. A gateway that runs but has not
/// announced itself in time gets a warning, not an error.
pub(crate) async fn wait_for_gateway(proc: &mut Proc, cfg: &CliConfig) -> Result<(), CliError> {
    let mesh = crate::mesh::Mesh::open(cfg.clone()).await?;
    let deadline = Instant::now() + GATEWAY_READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = proc.exited() {
            return Err(proc.exited_error(status).into());
        }
        if let Some(store) = mesh.bucket(&mesh.cfg.names.gateways_bucket).await? {
            if !crate::fence::live_replicas(&store).await?.is_empty() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    output::note(&format!(
        "warning: mesh-gateway runs but has not announced itself within {}s; see {}",
        GATEWAY_READY_TIMEOUT.as_secs(),
        proc.log.display()
    ));
    Ok(())
}

fn print_running(ctx: &mut Ctx, r: &Running) -> Result<(), CliError> {
    let out = &mut ctx.out;
    if r.secured {
        out.line("Agent Mesh is up, secured: every connection needs credentials of its own.")?;
    } else {
        out.line("Agent Mesh is up, INSECURE (--insecure): any client may do anything.")?;
    }
    out.line(&format!(
        "  NATS      {}  (JetStream, data in {})",
        r.nats_url,
        r.dir.display()
    ))?;
    match r.gateway_pid {
        Some(pid) => out.line(&format!("  gateway   mesh-gateway, pid {pid}"))?,
        None => out.line("  gateway   none (--no-gateway): start your own")?,
    }
    let logs: Vec<String> = r.logs.iter().map(|l| l.display().to_string()).collect();
    out.line(&format!("  logs      {}", logs.join(", ")))?;
    out.line("")?;
    let s = &r.subjects;
    out.table(
        &["", "SUBJECT", "HOW"],
        &[
            vec![
                "send".into(),
                s.send.clone(),
                "JetStream publish; Nats-Msg-Id = intent id, Mesh-Cost = USD".into(),
            ],
            vec![
                "inbox".into(),
                s.inbox.clone(),
                "subscribe with queue group <id>; reply to acknowledge".into(),
            ],
            vec![
                "rejected".into(),
                s.rejected.clone(),
                "rejection notices for the sender".into(),
            ],
            vec![
                "control".into(),
                s.control.clone(),
                "kill and resume notices".into(),
            ],
            vec![
                "heartbeat".into(),
                s.heartbeat.clone(),
                "publish every few seconds".into(),
            ],
        ],
    )?;
    out.line("")?;
    if let (Some(dir), Some(creds)) = (&r.auth_dir, &r.operator_creds) {
        out.line(&format!("  operator  credentials in {}", creds.display()))?;
        out.line(&format!(
            "  env       export MESH_NATS_URL={} MESH_NATS_CREDS={} MESH_AUTH_DIR={}",
            r.nats_url,
            creds.display(),
            dir.display()
        ))?;
        if let Some(add) = &r.add_agent {
            out.line(&format!("  agents    {add}"))?;
            out.line("            connect with that file and inbox prefix _INBOX_<id>")?;
        }
        out.line(&format!("  kill      {}", r.kill))?;
    } else {
        out.line(&format!("  kill      {}", r.kill))?;
        out.line(&format!("  env       export MESH_NATS_URL={}", r.nats_url))?;
    }
    out.line("")?;
    out.line("Ctrl-C stops the gateway and the server.")?;
    Ok(())
}
