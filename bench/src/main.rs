//! `mesh-bench`: the benchmark of issue 4. Parses flags, runs every phase on a current-thread
//! runtime, prints the table and writes the JSON. `mesh-bench child …` is how the benchmark runs
//! its own gateway replicas and baseline relay as separate processes.
//!
//! Exit codes: 0 when every phase ran (targets met or missed alike: the benchmark reports
//! targets, it does not assert them), 1 when a phase failed or the JSON could not be written,
//! 2 on bad usage.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_bench::{Env, Params};

/// Exit code when a phase failed (its figures are null in the report).
const EXIT_PHASE_FAILED: i32 = 1;

/// Benchmark of Agent Mesh against raw NATS, in the same run (see docs/BENCHMARKS.md).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Small counts and short windows: every phase in under two minutes (CI's smoke run).
    #[arg(long)]
    quick: bool,
    /// Write every figure to this JSON file, under stable keys.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Where the children's logs go (default: a fresh directory under the system temp dir).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Run only these phases (comma separated): throughput, fence, replay, policy, scale,
    /// secured, cluster.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(mesh_bench::PHASES))]
    only: Option<Vec<String>>,
    /// Also measure the relay shaped like the gateway (always on in a full run).
    #[arg(long)]
    decompose: bool,
    /// Record nats-server, the deliverer and this process with `perf record` during every
    /// measurement window, into DIR (`perf report -i DIR/<file>`).
    #[arg(long, value_name = "DIR")]
    perf: Option<PathBuf>,
    #[command(subcommand)]
    child: Option<Child>,
}

/// Processes the benchmark starts itself.
#[derive(Subcommand, Debug)]
enum Child {
    /// Internal: run as a child process of the benchmark.
    #[command(hide = true)]
    Child {
        #[command(subcommand)]
        role: Role,
    },
}

#[derive(Subcommand, Debug)]
enum Role {
    /// One gateway replica (mesh_gateway::run), until stdin closes or SIGTERM.
    Gateway {
        #[arg(long)]
        url: String,
        #[arg(long)]
        id: String,
    },
    /// The baseline relay, until stdin closes or SIGTERM.
    Relay {
        #[arg(long)]
        url: String,
        /// One consumer per agent, for this many agents (the gateway's shape).
        #[arg(long)]
        per_recipient: Option<usize>,
        /// Also follow the stream with a discovery consumer (the gateway's shape).
        #[arg(long)]
        discovery: bool,
    },
}

fn main() {
    let mut args = Args::parse();
    let code = match args.child.take() {
        Some(Child::Child { role }) => {
            let result = match role {
                Role::Gateway { url, id } => mesh_bench::child::gateway_main(&url, &id),
                Role::Relay {
                    url,
                    per_recipient,
                    discovery,
                } => mesh_bench::child::relay_main(
                    &url,
                    mesh_bench::relay::Shape {
                        per_recipient,
                        discovery,
                    },
                ),
            };
            match result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("mesh-bench child: {e:#}");
                    1
                }
            }
        }
        None => match bench(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("mesh-bench: {e:#}");
                EXIT_PHASE_FAILED
            }
        },
    };
    std::process::exit(code);
}

fn bench(args: Args) -> anyhow::Result<i32> {
    mesh_bench::child::init_tracing();
    let mut params = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    params.decompose |= args.decompose;
    let log_dir = args
        .log_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("mesh-bench-{}", std::process::id())));
    let env = Env {
        exe: std::env::current_exe().context("cannot find this binary")?,
        log_dir,
        perf_dir: args.perf,
        only: args.only,
    };
    let json = args.json;
    mesh_bench::progress(format!("child logs in {}", env.log_dir.display()));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    // Two cores: a current-thread runtime was as fast as the multi-thread one or faster for
    // this load (NATS-FIGURES), and it keeps the benchmark process to one core of the two.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(mesh_bench::run(params, env, command));
    rt.shutdown_background();
    println!("{}", report.table());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        mesh_bench::progress(format!("figures written to {}", path.display()));
    }
    Ok(if report.errors.is_empty() {
        0
    } else {
        EXIT_PHASE_FAILED
    })
}
