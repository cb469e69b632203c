//! `mesh-gateway`: parses flags and configuration, starts tracing, connects to NATS and runs one
//! gateway replica until SIGTERM or Ctrl-C (a second signal exits at once).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use mesh_auth::connect::GATEWAY_INBOX_PREFIX;
use mesh_gateway::config::NatsFlags;
use mesh_gateway::GatewayConfig;

/// The Agent Mesh gateway: delivers intents only while kill flags and policies allow.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see --print-config for every field and its default).
    #[arg(long, env = "MESH_CONFIG")]
    config: Option<PathBuf>,
    /// NATS connection: each flag overrides the file and the MESH_NATS_* variable.
    #[command(flatten)]
    nats: NatsFlags,
    /// This replica's id (unique among live replicas); defaults to <host>-<pid>.
    #[arg(long)]
    gateway_id: Option<String>,
    /// Replicas of the streams and buckets the gateway creates (3 in a cluster).
    #[arg(long)]
    replicas: Option<usize>,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9464); also
    /// MESH_METRICS_ADDR. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
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
    let mut connection = cfg.connection();
    args.nats.apply(&mut connection);
    cfg.set_connection(connection);
    if args.gateway_id.is_some() {
        cfg.gateway_id = args.gateway_id;
    }
    if let Some(r) = args.replicas {
        cfg.replicas = r;
    }
    if args.metrics_addr.is_some() {
        cfg.metrics_addr = args.metrics_addr;
    }
    cfg.validate()?;
    // Two cores: a current-thread runtime was as fast as the multi-thread one for this load.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let prepared = cfg.connection().prepare(
            format!("mesh-gateway {}", cfg.gateway_id()),
            GATEWAY_INBOX_PREFIX,
        )?;
        let url = prepared.shown_url;
        // Retries until a server answers and reconnects for ever: a gateway outlives NATS
        // restarts and failovers.
        let client = prepared
            .options
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(prepared.servers)
            .await
            .with_context(|| format!("cannot connect to NATS at {url}"))?;
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
