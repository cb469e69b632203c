//! Connection options as a user gives them: a comma-separated `--nats-url` (issue 13 point 3),
//! a token from `MESH_NATS_TOKEN`, and a missing creds file.

use mesh_testkit::NatsServer;

use crate::{assert_exit, json, mesh_cli, stderr};

#[tokio::test]
async fn status_takes_a_comma_separated_url_list() {
    let server = NatsServer::start();
    let url = server.url();
    // The same URL twice used to fail with "invalid port number".
    let list = format!("{url},{url}");
    let o = mesh_cli(&["status", "--json", "--nats-url", &list], &[]).await;
    assert_exit(&o, 0);
    assert!(json(&o).is_object(), "status prints a JSON object");
    // From the environment, with a dead server first in the list.
    let list = format!("nats://127.0.0.1:1, {url}");
    let o = mesh_cli(&["status", "--json"], &[("MESH_NATS_URL", list.as_str())]).await;
    assert_exit(&o, 0);
}

#[tokio::test]
async fn a_token_from_the_environment_gets_in_and_a_wrong_one_is_refused() {
    let server =
        NatsServer::start_with_conf("jetstream: enabled\nauthorization {\n  token: \"t0k3n\"\n}\n");
    let url = server.url();
    let o = mesh_cli(
        &["status", "--json", "--nats-url", &url],
        &[("MESH_NATS_TOKEN", "t0k3n")],
    )
    .await;
    assert_exit(&o, 0);

    let o = mesh_cli(
        &["status", "--nats-url", &url],
        &[("MESH_NATS_TOKEN", "guess")],
    )
    .await;
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("guess"), "the token leaked: {err}");
}

#[tokio::test]
async fn a_missing_creds_file_is_a_configuration_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gone = dir.path().join("ops.creds");
    let gone = gone.to_string_lossy();
    let o = mesh_cli(
        &[
            "status",
            "--nats-url",
            "nats://127.0.0.1:1",
            "--nats-creds",
            &gone,
        ],
        &[],
    )
    .await;
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(err.contains(gone.as_ref()), "{err}");
    assert!(err.contains("--nats-creds"), "{err}");
}
