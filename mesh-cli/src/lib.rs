//! mesh-cli: the operator's tool for Agent Mesh. Kill and resume agents, set their policies, see
//! their state, health and the audit trail, and run a local mesh.
//!
//! The binary only parses the command line, starts logging and calls [`run`]; every command is
//! library code, so tests call it with their own environment map and shutdown future.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap): global flags and the subcommands.
//! - [`config`]: [`CliConfig`], layered: defaults, file, `MESH_*` environment, flags.
//! - [`connect`]: connecting with a deadline and an error that names the URL.
//! - [`console`]: the HTTP API and web console of `mesh-cli console`.
//! - [`mesh`]: [`mesh::Mesh`], a connected session, and lookups of the mesh's streams and buckets.
//! - [`switch`]: the kill switch flow shared by `kill` and `resume` (flag, hold, fence, notice,
//!   audit; a resume also resets the policy counters).
//! - [`policies`]: policies in KV: read, change with compare-and-set, wait for the replicas,
//!   record the change (from, to) in the audit trail.
//! - [`counters`]: the mesh-wide policy counters of an agent (read for `status`, reset on
//!   `resume`).
//! - [`scan`]: every key of a KV bucket in one pass (for `status` at 10,000 agents).
//! - [`fence`]: live gateway replicas and waiting for their confirmations.
//! - [`retry`]: retrying a step until a deadline (a cluster electing after a node loss).
//! - [`events`]: reading audit events from the audit stream (history and live).
//! - [`local`]: finding and running nats-server and mesh-gateway processes for `up`.
//! - [`output`]: tables for people, JSON for scripts.
//! - [`error`]: [`CliError`], exit codes, and the one-line error report.
//! - [`cmd`]: one module per command: `kill`, `resume`, `status`, `policy`, `audit`, `tail`,
//!   `up`, `demo`, `agent` (credentials), `auth` (`auth init`), `console`.

#![forbid(unsafe_code)]

pub mod cli;
pub mod cmd;
pub mod config;
pub mod connect;
pub mod console;
pub mod counters;
pub mod error;
pub mod events;
pub mod fence;
pub mod local;
pub mod mesh;
pub mod output;
pub mod policies;
pub mod retry;
pub mod scan;
pub mod switch;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

pub use cli::{Cli, Command};
pub use config::CliConfig;
pub use error::{exit, CliError, Report};

use config::Overrides;
use output::Output;

/// Resolves when the user asks a long-running command (`tail`, `up`) to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What every command gets.
pub struct Ctx {
    /// The resolved configuration.
    pub cfg: CliConfig,
    /// Where results go.
    pub out: Output,
    /// The process environment (passed in; commands never read the real one).
    pub env: HashMap<String, String>,
    /// Taken by the command that runs until stopped.
    pub shutdown: Option<Shutdown>,
}

impl Ctx {
    /// The shutdown future; one that never resolves if it was already taken.
    pub fn take_shutdown(&mut self) -> Shutdown {
        self.shutdown
            .take()
            .unwrap_or_else(|| Box::pin(std::future::pending()))
    }
}

/// Runs one parsed command line. `env` is the process environment; `shutdown` resolves on
/// Ctrl-C.
pub async fn run(
    cli: Cli,
    env: HashMap<String, String>,
    shutdown: Shutdown,
) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    let json = global.json || env.get("MESH_JSON").is_some_and(|v| truthy(v));
    let file = global.config.or_else(|| {
        env.get("MESH_CONFIG")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
    });
    let overrides = Overrides {
        nats: global.nats,
        js_domain: global.js_domain,
        fence_timeout: command.fence_timeout(),
    };
    let cfg = CliConfig::load(file.as_deref(), &env, &overrides)?;
    let mut ctx = Ctx {
        cfg,
        out: Output::stdout(json),
        env,
        shutdown: Some(shutdown),
    };
    let name = command.name();
    match command {
        // These run until stopped and use the shutdown future themselves.
        Command::Tail(args) => cmd::tail::run(args, &mut ctx).await,
        Command::Up(args) => cmd::up::run(args, &mut ctx).await,
        Command::Demo(args) => cmd::demo::run(args, &mut ctx).await,
        Command::Console(args) => cmd::console::run(args, &mut ctx).await,
        // The others are cut short by it.
        command => {
            let mut shutdown = ctx.take_shutdown();
            let work = async {
                match command {
                    Command::Kill(args) => cmd::kill::run(args, &mut ctx).await,
                    Command::Resume(args) => cmd::resume::run(args, &mut ctx).await,
                    Command::Status(args) => cmd::status::run(args, &mut ctx).await,
                    Command::Policy(args) => cmd::policy::run(args, &mut ctx).await,
                    Command::Audit(args) => cmd::audit::run(args, &mut ctx).await,
                    Command::Agent(args) => cmd::agent::run(args, &mut ctx).await,
                    Command::Auth(args) => cmd::auth::run(args, &mut ctx).await,
                    _ => Ok(()),
                }
            };
            tokio::select! {
                result = work => result,
                _ = &mut shutdown => Err(CliError::Interrupted(name)),
            }
        }
    }
}

/// `1`, `true`, `yes`, `on` (any case).
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}
