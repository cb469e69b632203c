//! `mesh-gateway`: parses flags and configuration, starts tracing, connects to NATS and runs one
//! gateway replica until SIGTERM or Ctrl-C (a second signal exits at once).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use mesh_gateway::GatewayConfig;

/// The Agent Mesh gateway: delivers intents only while kill flags and policies allow.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see --print-config for every field and its default).
    #[arg(long, env = "MESH_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL(s), comma separated; overrides the file and MESH_NATS_URL.
    #[arg(long)]
    nats_url: Option<String>,
    /// This replica's id (unique among live replicas); defaults to <host>-<pid>.
    #[arg(long)]
    gateway_id: Option<String>,
    /// Replicas of the streams and buckets the gateway creates (3 in a cluster).
    #[arg(long)]
    replicas: Option<usize>,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_config {
        print!("{}", mesh_gateway::config::DEFAULT_CONFIG_TOML);
        return Ok(());
    }
    init_tracing(&args.log_format);
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut cfg = GatewayConfig::load(args.config.as_deref(), env)?;
    if let Some(url) = args.nats_url {
        cfg.nats_url = url;
    }
    if args.gateway_id.is_some() {
        cfg.gateway_id = args.gateway_id;
    }
    if let Some(r) = args.replicas {
        cfg.replicas = r;
    }
    cfg.validate()?;
    // Two cores: a current-thread runtime was as fast as the multi-thread one for this load.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("mesh-gateway {}", cfg.gateway_id()))
            // Outside every agent's `_INBOX_<id>`: no agent may read the gateway's replies.
            .custom_inbox_prefix(mesh_auth::permissions::GATEWAY_INBOX)
            .retry_on_initial_connect()
            .max_reconnects(None);
        if let Some(creds) = &cfg.nats_creds {
            opts = opts
                .credentials_file(creds)
                .await
                .with_context(|| format!("cannot read NATS credentials {creds}"))?;
        }
        let client = opts
            .connect(cfg.nats_url.as_str())
            .await
            .with_context(|| format!("cannot connect to NATS at {}", cfg.nats_url))?;
        mesh_gateway::run(client, cfg, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits the process at once.
async fn shutdown_signal() {
    wait_signal().await;
    tokio::spawn(async {
        wait_signal().await;
        eprintln!("second signal: exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
