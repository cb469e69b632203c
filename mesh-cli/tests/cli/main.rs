//! mesh-cli as a user runs it: the binary, its exit codes, its output. `usage` needs no
//! server; `switch`, `policy` and `up` run against a real nats-server from mesh-testkit, with the
//! gateway replicas played by the test (or run in the test's process) where one is needed.

mod agent;
mod browser;
mod connection;
mod console;
mod http;
mod policy;
pub mod status;
mod switch;
mod up;
mod usage;
mod webdriver;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_mesh-cli");

/// Runs mesh-cli with a clean environment plus `env`.
pub async fn mesh_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    mesh_cli_within(args, env, Duration::from_secs(60)).await
}

/// [`mesh_cli`] for a command that may take longer than a minute (the demo on a cluster).
pub async fn mesh_cli_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("mesh-cli finished within {limit:?}"))
        .expect("mesh-cli ran")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code; stdout: {} stderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// Sends a signal (`INT`, `TERM`) to a child process.
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args([format!("-{name}"), pid])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{name}");
}
