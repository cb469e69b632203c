//! `mesh-cli console [--addr HOST:PORT] [--token NAME:SECRET]`: the HTTP API and the web console
//! ([`crate::console`]) until Ctrl-C. It prints where it listens once it does (with `--json`,
//! `{"url": …, "addr": …}`), so a script can bind port 0 and read the port back.

use crate::console::{self, Tokens};
use crate::error::CliError;
use crate::mesh::Mesh;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to listen (e.g. 127.0.0.1:8470, 0.0.0.0:8470; port 0 picks a free one); also
    /// console_addr, MESH_CONSOLE_ADDR.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Bearer tokens as name:secret pairs, comma separated; also console_token,
    /// MESH_CONSOLE_TOKEN (prefer those: a flag shows in the process list).
    #[arg(long, value_name = "NAME:SECRET")]
    pub token: Option<String>,
    /// Serve reads (agents, policies, audit, events) without a token; writes always need one.
    /// Also console_open_reads, MESH_CONSOLE_OPEN_READS.
    #[arg(long)]
    pub open_reads: bool,
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let token = args.token.clone().or_else(|| {
        ctx.cfg
            .console_token
            .as_ref()
            .map(|s| s.expose().to_string())
    });
    let tokens = Tokens::parse(token.as_deref()).map_err(|e| CliError::Usage(e.to_string()))?;
    let open_reads = args.open_reads || ctx.cfg.console_open_reads;
    let addr = args.addr.unwrap_or_else(|| ctx.cfg.console_addr.clone());
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| CliError::Usage(format!("could not listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::Usage(format!("could not listen on {addr}: {e}")))?;
    let url = format!("http://{bound}");
    if ctx.out.is_json() {
        ctx.out.json(&serde_json::json!({
            "url": url,
            "addr": bound.to_string(),
            "open_reads": open_reads,
        }))?;
    } else {
        ctx.out.line(&format!(
            "console on {url} (API under /api, description at /openapi.json); Ctrl-C to stop"
        ))?;
    }
    let shutdown = ctx.take_shutdown();
    console::serve(listener, mesh, tokens, open_reads, shutdown)
        .await
        .map_err(|e| CliError::nats("the console's HTTP server failed", e))
}
