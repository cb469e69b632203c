//! `mesh-cli` run as a process, the way an operator runs it.

use std::process::Output;
use std::time::Duration;

use crate::gateways::cli_binary;

/// Runs `mesh-cli` against `urls` (a comma-separated list) as an operator would.
pub fn mesh_cli(urls: &str, args: &[&str]) -> tokio::process::Child {
    mesh_cli_env(urls, &[], args)
}

/// [`mesh_cli`] with `MESH_*` variables of `env` set as well.
pub fn mesh_cli_env(urls: &str, env: &[(&str, &str)], args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(cli_binary())
        .env_clear()
        .env("MESH_NATS_URL", urls)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mesh-cli")
}

/// Waits for a `mesh-cli` started with [`mesh_cli`]; panics after a minute.
pub async fn finished(child: tokio::process::Child) -> Output {
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("mesh-cli finished within a minute")
        .expect("mesh-cli ran")
}

/// Both outputs of a finished `mesh-cli`, for assertion messages.
pub fn shown(o: &Output) -> String {
    format!(
        "exit {:?}; stdout: {}; stderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}
