//! user/password, token, nkey seed file and creds file against servers that require them.
//! A refusal comes back at once as `ConnectError::Auth`, never as a hang.

use std::time::Instant;

use mesh_auth::connect::{ConnectError, ConnectionError, Field, NatsConnection, Secret};
use mesh_testkit::NatsServer;

use crate::{round_trip, TIMEOUT};

/// Connects with `conn`, expecting the server to refuse the credentials promptly.
async fn refused(conn: &NatsConnection) {
    let started = Instant::now();
    let err = conn
        .connect("auth-test", "_A", TIMEOUT)
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectError::Auth { .. }), "{err:?}");
    assert!(
        started.elapsed() < TIMEOUT,
        "refusal took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn user_and_password() {
    let server =
        NatsServer::start_with_conf("authorization {\n  user: ops\n  password: \"s3cret\"\n}\n");
    let good = NatsConnection {
        user: Some("ops".into()),
        password: Some(Secret::new("s3cret")),
        ..NatsConnection::new(server.url())
    };
    let client = good
        .connect("auth-test", "_A", TIMEOUT)
        .await
        .expect("connects");
    round_trip(&client, "_A").await;

    let wrong = NatsConnection {
        password: Some(Secret::new("guess")),
        ..good.clone()
    };
    refused(&wrong).await;
    refused(&NatsConnection::new(server.url())).await;
    let err = wrong
        .connect("auth-test", "_A", TIMEOUT)
        .await
        .expect_err("refused");
    assert!(!format!("{err} {err:?}").contains("guess"), "{err:?}");
}

#[tokio::test]
async fn token() {
    let server = NatsServer::start_with_conf("authorization {\n  token: \"t0k3n\"\n}\n");
    let good = NatsConnection {
        token: Some(Secret::new("t0k3n")),
        ..NatsConnection::new(server.url())
    };
    let client = good
        .connect("auth-test", "_A", TIMEOUT)
        .await
        .expect("connects");
    round_trip(&client, "_A").await;
    refused(&NatsConnection {
        token: Some(Secret::new("nope")),
        ..good
    })
    .await;
}

#[tokio::test]
async fn nkey_seed_file() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_conf(&format!(
        "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
        user.public_key()
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, user.seed().expect("seed")).expect("write seed");
    let good = NatsConnection {
        nkey: Some(seed),
        ..NatsConnection::new(server.url())
    };
    let client = good
        .connect("auth-test", "_A", TIMEOUT)
        .await
        .expect("connects");
    round_trip(&client, "_A").await;

    let stranger = dir.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().expect("seed"))
        .expect("write seed");
    refused(&NatsConnection {
        nkey: Some(stranger),
        ..good
    })
    .await;
}

#[tokio::test]
async fn a_missing_creds_file_is_named_before_connecting() {
    let server = NatsServer::start();
    let gone = std::env::temp_dir().join(format!("mesh-no-such-{}.creds", std::process::id()));
    let err = NatsConnection {
        creds: Some(gone.clone()),
        ..NatsConnection::new(server.url())
    }
    .connect("auth-test", "_A", TIMEOUT)
    .await
    .expect_err("missing file");
    match &err {
        ConnectError::Settings(ConnectionError::MissingFile { field, path }) => {
            assert_eq!(*field, Field::Creds);
            assert_eq!(path, &gone);
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&gone.display().to_string()),
        "{err}"
    );
}
