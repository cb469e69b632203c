//! The `mesh-cli` binary: parse, start logging, run the command, print an error once.

use std::process::ExitCode;

use clap::Parser;
use mesh_cli::{exit, Cli, Report};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    init_tracing(&env);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return code(exit::FAILURE);
        }
    };
    match runtime.block_on(async { mesh_cli::run(cli, env, stop_signal()).await }) {
        Ok(()) => code(exit::OK),
        Err(e) if e.is_broken_pipe() => code(exit::OK),
        Err(e) => {
            eprintln!("error: {:#}", Report(&e));
            code(e.exit_code())
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed at once (inside the
/// runtime), so a signal during start-up is not lost; a handler that cannot be installed leaves
/// that signal's default action.
fn stop_signal() -> mesh_cli::Shutdown {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    Box::pin(async move {
        let interrupt = async {
            match interrupt.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let terminate = async {
            match terminate.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate => {}
        }
    })
}

/// Logs go to stderr; the filter is MESH_LOG, else RUST_LOG, else warnings only.
fn init_tracing(env: &std::collections::HashMap<String, String>) {
    let filter = env
        .get("MESH_LOG")
        .or_else(|| env.get("RUST_LOG"))
        .cloned()
        .unwrap_or_else(|| "warn,async_nats=error".to_string());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}
