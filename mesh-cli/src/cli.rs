//! The command line: global flags and one subcommand. Each subcommand's arguments live in its
//! module under [`crate::cmd`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mesh_gateway::config::NatsFlags;

use crate::cmd;

/// Shown after `--help`.
const AFTER_HELP: &str = "\
Connection and names come from, in order: defaults, --config FILE (or MESH_CONFIG), MESH_*
environment variables (MESH_NATS_URL, MESH_NATS_CREDS, MESH_NATS_TOKEN, MESH_NATS_TLS_CA,
MESH_FENCE_TIMEOUT, MESH_NAMES__PREFIX, ...), then flags. --nats-url takes a comma-separated
list of servers. Connected to another region's leaf node, give the hub's JetStream domain with
--js-domain (MESH_NATS_JS_DOMAIN): every command then reaches the hub's streams and buckets.
MESH_JSON=1 is --json; MESH_LOG (or RUST_LOG) sets the log filter.

Exit codes: 0 ok, 1 failure, 2 bad usage, configuration or policy value, 3 kill, resume or
policy change written but not confirmed by every live gateway replica in time, 130 interrupted
(Ctrl-C or SIGTERM) before the command finished; `tail` and `up` exit 0 when stopped that way.";

/// mesh-cli: the operator's tool for Agent Mesh.
#[derive(Debug, Parser)]
#[command(name = "mesh-cli", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Configuration file (TOML); also MESH_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS connection: URL list, creds, nkey, user and password, token, TLS.
    #[command(flatten)]
    pub nats: NatsFlags,
    /// The hub's JetStream domain, when connected to another region's leaf node (e.g. hub);
    /// also MESH_NATS_JS_DOMAIN.
    #[arg(
        long,
        global = true,
        value_name = "DOMAIN",
        visible_alias = "nats-js-domain"
    )]
    pub js_domain: Option<String>,
    /// Print JSON for scripts instead of text for people; also MESH_JSON=1.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Kill an agent: nothing is delivered to or from it until resume. Returns when every live
    /// gateway replica has confirmed.
    Kill(cmd::kill::Args),
    /// Resume a killed agent: the intents held for it are delivered in order.
    Resume(cmd::resume::Args),
    /// Agents (state, health, instances, cost, intents, pending, rejected) and gateway
    /// replicas.
    Status(cmd::status::Args),
    /// Set, show or remove an agent's policy or the mesh-wide default: rates, caps, cost
    /// ceilings, allowed actions, health thresholds.
    Policy(cmd::policy::Args),
    /// Read the audit trail: kills, resumes, rejections, ...
    Audit(cmd::audit::Args),
    /// Follow the audit trail live.
    Tail(cmd::tail::Args),
    /// Run a local mesh: nats-server with JetStream and one mesh-gateway, until Ctrl-C.
    Up(cmd::up::Args),
    /// The rogue-agent scenario, end to end, on a local mesh.
    Demo(cmd::demo::Args),
    /// Agents' credentials: add (issue), revoke, list.
    Agent(cmd::agent::Args),
    /// The identities of a secured mesh for your own NATS servers: init.
    Auth(cmd::auth::Args),
    /// Serve the HTTP API (agents, kill, resume, policies, audit, live events) and the web
    /// console, authenticated by bearer tokens, until Ctrl-C.
    Console(cmd::console::Args),
}

impl Command {
    /// The `--timeout` of kill and resume: a flag-layer value of `fence_timeout`.
    pub fn fence_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Command::Kill(a) => a.timeout,
            Command::Resume(a) => a.timeout,
            Command::Policy(a) => cmd::policy::timeout(a),
            _ => None,
        }
    }

    /// The command's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Kill(_) => "kill",
            Command::Resume(_) => "resume",
            Command::Status(_) => "status",
            Command::Policy(_) => "policy",
            Command::Audit(_) => "audit",
            Command::Tail(_) => "tail",
            Command::Up(_) => "up",
            Command::Demo(_) => "demo",
            Command::Agent(_) => "agent",
            Command::Auth(_) => "auth",
            Command::Console(_) => "console",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "mesh-cli",
            "kill",
            "deployer",
            "--reason",
            "r",
            "--json",
            "--nats-url",
            "nats://x:1",
            "--js-domain",
            "hub",
        ])
        .expect("parses");
        assert!(cli.global.json);
        assert_eq!(cli.global.js_domain.as_deref(), Some("hub"));
        assert_eq!(cli.global.nats.nats_url.as_deref(), Some("nats://x:1"));
        assert_eq!(cli.command.name(), "kill");
    }

    #[test]
    fn bad_ids_and_missing_reasons_are_usage_errors() {
        let err =
            Cli::try_parse_from(["mesh-cli", "kill", "a.b", "--reason", "x"]).expect_err("bad id");
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        assert!(err.to_string().contains("a.b"), "{err}");
        let err = Cli::try_parse_from(["mesh-cli", "kill", "a"]).expect_err("no reason");
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
    }
}
