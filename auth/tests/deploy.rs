//! The nats-server configs shipped in deploy/nats/ work with the include file `mesh-cli auth
//! init` writes: every one passes `nats-server -t`, and the single-node one runs secured
//! (the operator uses JetStream, an agent is refused the kill bucket).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{jetstream, ConnectOptions, Event};
use mesh_auth::{permissions, AuthDir};
use mesh_testkit::NatsServer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A shipped config with `/data` moved into `dir`, next to a fresh `nats-auth.conf`.
fn prepared(config: &str, dir: &Path, auth: &AuthDir) -> PathBuf {
    let text = std::fs::read_to_string(repo().join(config)).expect("read config");
    assert!(
        text.contains("include \"nats-auth.conf\""),
        "{config} has no identity include"
    );
    let text = text.replace("\"/data", &format!("\"{}", dir.join("data").display()));
    std::fs::copy(auth.server_include(), dir.join("nats-auth.conf")).expect("copy include");
    let path = dir.join("server.conf");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn every_shipped_config_is_valid_with_the_generated_identity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let auth = AuthDir::init(&tmp.path().join("auth"), "mesh").expect("init");
    for config in [
        "deploy/nats/single.conf",
        "deploy/nats/cluster/n1.conf",
        "deploy/nats/cluster/n2.conf",
        "deploy/nats/cluster/n3.conf",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = prepared(config, dir.path(), &auth);
        let out = std::process::Command::new(mesh_testkit::nats_server_binary().expect("binary"))
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run nats-server -t");
        assert!(
            out.status.success(),
            "{config}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn the_single_node_config_runs_secured() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let auth = AuthDir::init(&tmp.path().join("auth"), "mesh").expect("init");
    let path = prepared("deploy/nats/single.conf", tmp.path(), &auth);
    // The harness owns ports and listen address (flags win); the include is inlined because
    // the harness writes the config elsewhere.
    let text = std::fs::read_to_string(&path).expect("read").replace(
        "include \"nats-auth.conf\"",
        &std::fs::read_to_string(auth.server_include()).expect("include"),
    );
    let server = NatsServer::start_with_conf(&text);

    let operator = ConnectOptions::with_credentials(
        &std::fs::read_to_string(auth.operator_creds()).expect("creds"),
    )
    .expect("parse")
    .custom_inbox_prefix(permissions::OPERATOR_INBOX)
    .connect(server.url())
    .await
    .expect("operator connects");
    let js = jetstream::new(operator);
    js.create_key_value(jetstream::kv::Config {
        bucket: "mesh-kill".into(),
        ..Default::default()
    })
    .await
    .expect("the operator creates the kill bucket");

    let agent = auth.add_agent("billing", None).expect("add");
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let client = ConnectOptions::with_credentials(&agent.creds)
        .expect("parse")
        .custom_inbox_prefix(permissions::agent_inbox("billing"))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(server.url())
        .await
        .expect("agent connects");
    client
        .publish("$KV.mesh-kill.billing", "".into())
        .await
        .expect("sent");
    let refusal = loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Some(Event::ServerError(e))) => break e.to_string(),
            Ok(Some(_)) => continue,
            other => panic!("no refusal: {other:?}"),
        }
    };
    assert!(refusal.contains("Permissions Violation"), "{refusal}");
}
