//! `mesh-cli agent add|list|revoke` on the secured mesh `mesh-cli up` runs: credentials issued
//! while the server runs work at once with a plain NATS client, show in the list and the audit
//! trail, and stop working when revoked.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use async_nats::{jetstream, ConnectOptions, Event};
use futures::StreamExt;

use crate::up::{build_gateway, start_up, stop};
use crate::{assert_exit, json, mesh_cli, stderr};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_issued_used_listed_and_revoked() {
    build_gateway();
    let (child, running) = start_up(&[]).await;
    let url = running["nats_url"].as_str().expect("url").to_string();
    let creds = running["operator_creds"]
        .as_str()
        .expect("creds")
        .to_string();
    let auth_dir = running["auth_dir"].as_str().expect("auth dir").to_string();
    let env = [
        ("MESH_NATS_URL", url.as_str()),
        ("MESH_NATS_CREDS", creds.as_str()),
        ("MESH_AUTH_DIR", auth_dir.as_str()),
    ];

    // Ids that would widen the permission template are refused.
    for bad in ["_mesh", "a.b", "*"] {
        let o = mesh_cli(&["agent", "add", bad], &env).await;
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(bad), "{}", stderr(&o));
    }

    // Issued to a file, 0600, in the format every NATS tool reads.
    let files = tempfile::tempdir().expect("temp dir");
    let billing_file = files.path().join("billing.creds");
    let billing_path = billing_file.display().to_string();
    let o = mesh_cli(
        &["agent", "add", "billing", "--out", &billing_path, "--json"],
        &env,
    )
    .await;
    assert_exit(&o, 0);
    let added = json(&o);
    assert_eq!(added["credential"]["state"], "active");
    assert_eq!(added["inbox_prefix"], "_INBOX_billing");
    let mode = std::fs::metadata(&billing_file)
        .expect("file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&billing_file).expect("read");
    assert!(
        text.starts_with("-----BEGIN NATS USER JWT-----\n"),
        "{text}"
    );
    assert!(text.contains("\n------END NATS USER JWT------\n"));
    assert!(text.contains("\n-----BEGIN USER NKEY SEED-----\nSU"));
    let o = mesh_cli(&["agent", "add", "billing", "--out", &billing_path], &env).await;
    assert_exit(&o, 2);

    // To standard output: the .creds text itself.
    let o = mesh_cli(&["agent", "add", "deployer"], &env).await;
    assert_exit(&o, 0);
    let deployer_creds = String::from_utf8(o.stdout).expect("utf-8");

    // Both work at once, with no server change: billing serves, the deployer sends.
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let billing = ConnectOptions::new()
        .credentials_file(&billing_file)
        .await
        .expect("creds file")
        .custom_inbox_prefix("_INBOX_billing")
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(&url)
        .await
        .expect("billing connects");
    let mut inbox = billing
        .queue_subscribe("mesh.agent.billing.inbox", "billing".into())
        .await
        .expect("subscribe");
    let echo_subject = billing.new_inbox();
    let mut echo = billing.subscribe(echo_subject.clone()).await.expect("sub");
    billing.publish(echo_subject, "".into()).await.expect("pub");
    tokio::time::timeout(DEADLINE, echo.next())
        .await
        .expect("echo");
    let deployer = ConnectOptions::with_credentials(&deployer_creds)
        .expect("creds")
        .custom_inbox_prefix("_INBOX_deployer")
        .connect(&url)
        .await
        .expect("deployer connects");
    jetstream::new(deployer)
        .publish("mesh.intent.deployer.billing.invoice.create", "7".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let msg = tokio::time::timeout(DEADLINE, inbox.next())
        .await
        .expect("delivered in time")
        .expect("delivery");
    assert_eq!(&msg.payload[..], b"7");
    let from = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Mesh-From"))
        .map(|v| v.to_string());
    assert_eq!(from.as_deref(), Some("deployer"));
    billing
        .publish(msg.reply.expect("a request"), "".into())
        .await
        .expect("ack");

    let o = mesh_cli(&["agent", "list", "--json"], &env).await;
    assert_exit(&o, 0);
    let list = json(&o);
    let states: Vec<(String, String)> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|c| {
            (
                c["agent"].as_str().unwrap_or("").into(),
                c["state"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("billing".into(), "active".into()),
            ("deployer".into(), "active".into())
        ]
    );

    // Revoked: the connection is closed, a new one refused, the list and audit say so.
    let o = mesh_cli(&["agent", "revoke", "billing", "--json"], &env).await;
    assert_exit(&o, 0);
    assert_eq!(json(&o)["revoked"].as_array().map(Vec::len), Some(1));
    loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(Event::Disconnected)) => break,
            Ok(Some(_)) => continue,
            other => panic!("billing stayed connected: {other:?}"),
        }
    }
    let again = ConnectOptions::new()
        .credentials_file(&billing_file)
        .await
        .expect("creds file")
        .connect(&url)
        .await;
    assert_eq!(
        again.expect_err("refused").kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
    );
    let o = mesh_cli(&["agent", "list", "--json"], &env).await;
    assert_eq!(json(&o)[0]["state"], "revoked");
    let o = mesh_cli(&["audit", "--kind", "credentials", "--json"], &env).await;
    assert_exit(&o, 0);
    let reasons: Vec<String> = json(&o)
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["agent"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "billing credentials issued",
            "deployer credentials issued",
            "billing credentials revoked"
        ]
    );

    // kill --revoke: the kill is fenced and the credentials are revoked, in one answer.
    let o = mesh_cli(
        &[
            "kill", "deployer", "--reason", "rogue", "--revoke", "--json",
        ],
        &env,
    )
    .await;
    assert_exit(&o, 0);
    let out = json(&o);
    assert_eq!(
        out["replicas"]["confirmed"], out["replicas"]["live"],
        "{out}"
    );
    assert_eq!(
        out["revoked"]["revoked"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
    let again = ConnectOptions::with_credentials(&deployer_creds)
        .expect("creds")
        .connect(&url)
        .await;
    assert_eq!(
        again.expect_err("refused").kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
    );

    assert_eq!(stop(child, "TERM").await, Some(0));
}
