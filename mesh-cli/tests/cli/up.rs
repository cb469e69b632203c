//! `mesh-cli up`: a local server (and gateway) until Ctrl-C.

use std::time::Duration;

use serde_json::Value;

use crate::{assert_exit, json, mesh_cli, stdout, BIN};

/// Starts `mesh-cli up --json <extra>` (public: the agent tests run on it too) and returns it with the JSON it printed once ready.
pub async fn start_up(extra: &[&str]) -> (tokio::process::Child, Value) {
    let nats = mesh_testkit::nats_server_binary().expect("a nats-server binary");
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("MESH_NATS_SERVER", &nats)
        .args(["up", "--json"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut text = String::new();
    let running: Value = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        loop {
            let n = stdout.read(&mut buf).await.expect("read");
            assert!(n > 0, "up exited early: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                return v;
            }
        }
    })
    .await
    .expect("up printed its JSON");
    (child, running)
}

/// Builds the gateway next to mesh-cli (a no-op when fresh): a skipped test proves nothing, and
/// `cargo test -p mesh-cli` alone would not rebuild another package's binary.
pub fn build_gateway() {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| mesh_testkit::workspace_binary("mesh-gateway"));
    let gateway = std::path::Path::new(BIN).with_file_name("mesh-gateway");
    assert_eq!(
        built, &gateway,
        "mesh-gateway is not built next to mesh-cli"
    );
}

/// Sends `signal`, then waits for the exit code.
pub async fn stop(mut child: tokio::process::Child, signal: &str) -> Option<i32> {
    crate::signal(&child, signal);
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("up stopped")
        .expect("wait")
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_insecure_without_a_gateway_runs_an_open_server_until_interrupted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().display().to_string();
    let (child, running) = start_up(&["--no-gateway", "--insecure", "--dir", &dir_arg]).await;
    let url = running["nats_url"].as_str().expect("url").to_string();
    assert_eq!(running["subjects"]["inbox"], "mesh.agent.<id>.inbox");
    assert_eq!(running["gateway_pid"], Value::Null);
    assert_eq!(running["secured"], false);
    assert_eq!(running["auth_dir"], Value::Null);

    // The server has JetStream: a command against it works.
    let o = mesh_cli(&["resume", "x", "--nats-url", &url], &[]).await;
    assert_exit(&o, 0);

    assert_eq!(stop(child, "INT").await, Some(0));
    assert!(
        async_nats::connect(&url).await.is_err(),
        "the server is gone"
    );
    assert!(dir.path().join("store").is_dir(), "--dir keeps the data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_gateway_that_confirms_kills() {
    build_gateway();
    // Connection settings meant for another server reach neither the local gateway nor up's
    // own wait for it: a CA file that does not exist would stop both.
    let (child, running) = start_up(&[
        "--nats-token",
        "meant-for-another-server",
        "--nats-tls-ca",
        "/nonexistent/ca.pem",
    ])
    .await;
    let url = running["nats_url"].as_str().expect("url").to_string();
    assert!(running["gateway_pid"].is_u64(), "{running}");
    assert_eq!(running["secured"], true);
    let creds = running["operator_creds"].as_str().expect("operator creds");

    // Secured: without credentials the server refuses mesh-cli.
    let o = mesh_cli(&["status", "--nats-url", &url], &[]).await;
    assert_exit(&o, 1);
    assert!(
        crate::stderr(&o).to_lowercase().contains("authorization"),
        "{}",
        crate::stderr(&o)
    );

    let o = mesh_cli(
        &[
            "kill",
            "deployer",
            "--reason",
            "r",
            "--json",
            "--nats-url",
            &url,
        ],
        &[("MESH_NATS_CREDS", creds)],
    )
    .await;
    assert_exit(&o, 0);
    let out = json(&o);
    assert_eq!(
        out["replicas"]["live"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
    assert_eq!(out["replicas"]["confirmed"], out["replicas"]["live"]);
    let o = mesh_cli(
        &["resume", "deployer", "--nats-url", &url, "--creds", creds],
        &[],
    )
    .await;
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("1/1 replicas confirmed"),
        "{}",
        stdout(&o)
    );

    assert_eq!(stop(child, "TERM").await, Some(0));
}
