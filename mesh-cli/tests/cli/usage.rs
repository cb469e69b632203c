//! Bad usage, bad configuration and unreachable servers: no server needed.

use crate::{assert_exit, mesh_cli, stderr};

#[tokio::test]
async fn a_bad_agent_id_is_a_usage_error_naming_the_id_and_the_alphabet() {
    let o = mesh_cli(&["kill", "a.b", "--reason", "x"], &[]).await;
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("a.b"), "{err}");
    assert!(err.contains("A-Z a-z 0-9 _ -"), "{err}");
}

#[tokio::test]
async fn kill_without_a_reason_is_a_usage_error() {
    let o = mesh_cli(&["kill", "deployer"], &[]).await;
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--reason"), "{}", stderr(&o));
}

#[tokio::test]
async fn an_unknown_command_is_a_usage_error() {
    let o = mesh_cli(&["explode"], &[]).await;
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("explode"), "{}", stderr(&o));
}

#[tokio::test]
async fn an_unknown_configuration_variable_is_a_usage_error_naming_it() {
    let o = mesh_cli(&["status"], &[("MESH_NATS_URLL", "nats://x:1")]).await;
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("nats_urll"), "{}", stderr(&o));
}

#[tokio::test]
async fn an_unreachable_server_fails_with_a_message_naming_the_url() {
    let o = mesh_cli(
        &[
            "kill",
            "deployer",
            "--reason",
            "x",
            "--nats-url",
            "nats://127.0.0.1:1",
        ],
        &[],
    )
    .await;
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("nats://127.0.0.1:1"), "{err}");
    assert!(err.contains("--nats-url"), "says what to do: {err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "printed once: {err}"
    );
    // The same URL from the environment.
    let o = mesh_cli(&["status"], &[("MESH_NATS_URL", "nats://127.0.0.1:1")]).await;
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("nats://127.0.0.1:1"), "{}", stderr(&o));
}

/// Runs `mesh-cli demo <args>` within `limit`, asserts it passed, and returns its stdout.
async fn demo(args: &[&str], limit: std::time::Duration) -> String {
    let o = demo_run(args, limit).await;
    assert_exit(&o, 0);
    crate::stdout(&o)
}

async fn demo_run(args: &[&str], limit: std::time::Duration) -> std::process::Output {
    // The demo starts mesh-gateway processes from next to mesh-cli: build it (a no-op when
    // fresh), since `cargo test -p mesh-cli` alone does not.
    crate::up::build_gateway();
    let nats = mesh_testkit::nats_server_binary().expect("nats-server for the demo");
    let nats = nats.to_string_lossy().to_string();
    let mut all = vec!["demo"];
    all.extend_from_slice(args);
    crate::mesh_cli_within(&all, &[("MESH_NATS_SERVER", nats.as_str())], limit).await
}

#[tokio::test]
async fn demo_runs_the_rogue_agent_scenario_and_passes_its_checks() {
    let out = demo(&[], std::time::Duration::from_secs(60)).await;
    assert!(out.contains("2/2 replicas confirmed"), "{out}");
    assert!(
        out.contains("delivered to the deployer since the kill: 0"),
        "{out}"
    );
    // Step 6: the policy kills the deployer with no operator, and the cap held.
    assert!(
        out.contains("policy of deployer set: 2/2 replicas applied it"),
        "{out}"
    );
    assert!(
        out.contains("killed automatically") && out.contains("by policy:max_intents_per_hour"),
        "{out}"
    );
    assert!(out.contains("audit: autokill deployer by policy:"), "{out}");
    assert!(out.contains("infra received"), "{out}");
    assert!(out.contains("demo passed every check"), "{out}");
}

/// `demo --cluster`: the same scenario on a local three-node cluster, one node SIGKILLed before
/// the kill and restarted before the resume.
#[tokio::test]
async fn demo_on_a_cluster_survives_the_loss_of_a_node() {
    // About 45 s in a debug build on two cores; the limit leaves room for a loaded machine.
    let limit = std::time::Duration::from_secs(300);
    let version = mesh_testkit::nats_server_version().expect("nats-server version");
    if version.starts_with("2.11.") {
        // On nats-server 2.11 the cluster recovers from the node loss slowly under the suite's
        // load: a later step of the demo can time out (a bucket read, a policy change not
        // applied in time, even a kill not confirmed by a replica within 45 s; GUARANTEES
        // limit 12). Asserted there: the demo fails, if it does, only on such a wait, never on
        // a broken promise (those checks say what reached or left the deployer).
        let o = demo_run(&["--cluster"], limit).await;
        let (out, err) = (crate::stdout(&o), crate::stderr(&o));
        if o.status.code() != Some(0) {
            let liveness = [
                "timed out",
                "applied the policy",
                "could not",
                "confirmed the kill",
            ];
            assert!(
                o.status.code() == Some(1)
                    && err
                        .lines()
                        .any(|l| l.starts_with("error:") && liveness.iter().any(|w| l.contains(w))),
                "the cluster demo on {version} failed on something other than a wait: {out}\n{err}"
            );
        }
        return;
    }
    let out = demo(&["--cluster"], limit).await;
    assert!(out.contains("a three-node cluster, streams R3"), "{out}");
    assert!(
        out.contains("node n1 of the cluster crashes (SIGKILL)"),
        "{out}"
    );
    assert!(
        out.contains("killed deployer: 2/2 replicas confirmed"),
        "{out}"
    );
    assert!(
        out.contains("delivered to the deployer since the kill: 0"),
        "{out}"
    );
    assert!(out.contains("node n1 restarted"), "{out}");
    assert!(out.contains("held intents delivered in order"), "{out}");
    assert!(out.contains("demo passed every check"), "{out}");
}

#[tokio::test]
async fn up_says_how_to_get_a_nats_server() {
    let o = mesh_cli(&["up"], &[("MESH_NATS_SERVER", "/no/such/nats-server")]).await;
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("/no/such/nats-server"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn ctrl_c_cuts_a_command_short_with_exit_130() {
    // A server that accepts connections and never speaks: the connect would take seconds.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("nats://{}", listener.local_addr().expect("addr"));
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            open.push(sock);
        }
    });
    let mut child = tokio::process::Command::new(crate::BIN)
        .env_clear()
        .args(["status", "--nats-url", &url])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    crate::signal(&child, "INT");
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let status = child.wait().await.expect("wait");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            e.read_to_string(&mut err).await.expect("read");
        }
        (status, err)
    })
    .await
    .expect("mesh-cli stopped");
    assert_eq!(out.0.code(), Some(130), "{}", out.1);
    assert!(out.1.contains("interrupted"), "{}", out.1);
}
