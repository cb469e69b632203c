//! Settings checks that need no server; connecting is tested against real nats-servers in
//! `auth/tests/connect/`.

use std::path::Path;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

#[test]
fn fields_are_named_alike_in_file_flag_and_environment() {
    assert_eq!(Field::TlsCa.config_name(), "nats_tls_ca");
    assert_eq!(Field::TlsCa.flag(), "--nats-tls-ca");
    assert_eq!(Field::TlsCa.env(), "MESH_NATS_TLS_CA");
    assert_eq!(
        Field::Creds.to_string(),
        "`nats_creds` (--nats-creds, MESH_NATS_CREDS)"
    );
    // Every config name is a field of NatsConnection with the `nats_` prefix.
    let json = serde_json::to_value(NatsConnection::default()).expect("serializes");
    for field in Field::ALL {
        let name = field.config_name().trim_start_matches("nats_");
        assert!(json.get(name).is_some(), "{name}");
    }
}

#[test]
fn serde_defaults_and_refuses_unknown_fields() {
    let c: NatsConnection =
        serde_json::from_str(r#"{"url":"tls://a:1","token":"t"}"#).expect("parses");
    assert_eq!(c.url, "tls://a:1");
    assert_eq!(c.token, Some(Secret::new("t")));
    assert_eq!(c.creds, None);
    let err = serde_json::from_str::<NatsConnection>(r#"{"urls":"x"}"#).expect_err("typo");
    assert!(err.to_string().contains("urls"), "{err}");
    let empty: NatsConnection = serde_json::from_str("{}").expect("parses");
    assert_eq!(empty, NatsConnection::default());
}

#[test]
fn debug_never_shows_a_password_or_token() {
    let c = NatsConnection {
        user: Some("ops".into()),
        password: Some(Secret::new("hunter2")),
        token: Some(Secret::new("s3cr3t")),
        ..NatsConnection::default()
    };
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cr3t"),
        "{shown}"
    );
    assert!(shown.contains("ops"), "{shown}");
}

#[test]
fn one_way_to_authenticate() {
    let conflict = |c: NatsConnection| match c.check() {
        Err(ConnectionError::Conflict { first, second }) => (first, second),
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert_eq!(
        conflict(NatsConnection {
            creds: Some("a.creds".into()),
            user: Some("u".into()),
            password: Some("p".into()),
            ..NatsConnection::default()
        }),
        (Field::Creds, Field::User)
    );
    assert_eq!(
        conflict(NatsConnection {
            token: Some("t".into()),
            ..NatsConnection::new("nats://u:p@a:1")
        }),
        (Field::Token, Field::Url)
    );
    assert_eq!(
        conflict(NatsConnection {
            nkey: Some("seed".into()),
            token: Some("t".into()),
            ..NatsConnection::default()
        }),
        (Field::Nkey, Field::Token)
    );
    let err = NatsConnection {
        creds: Some("a.creds".into()),
        token: Some("t".into()),
        ..NatsConnection::default()
    }
    .check()
    .expect_err("conflict");
    assert!(err.to_string().contains("--nats-token"), "{err}");
}

#[test]
fn halves_come_in_pairs() {
    let incomplete = |c: NatsConnection| match c.check() {
        Err(ConnectionError::Incomplete { field, needs }) => (field, needs),
        other => panic!("expected incomplete, got {other:?}"),
    };
    assert_eq!(
        incomplete(NatsConnection {
            user: Some("u".into()),
            ..NatsConnection::default()
        }),
        (Field::User, Field::Password)
    );
    assert_eq!(
        incomplete(NatsConnection {
            password: Some("p".into()),
            ..NatsConnection::default()
        }),
        (Field::Password, Field::User)
    );
    assert_eq!(
        incomplete(NatsConnection {
            tls_key: Some("k.pem".into()),
            ..NatsConnection::default()
        }),
        (Field::TlsKey, Field::TlsCert)
    );
}

#[test]
fn a_missing_file_names_its_path_and_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gone = dir.path().join("gateway.creds");
    let err = NatsConnection {
        creds: Some(gone.clone()),
        ..NatsConnection::default()
    }
    .prepare("t", "_T")
    .expect_err("missing");
    match &err {
        ConnectionError::MissingFile { field, path } => {
            assert_eq!(*field, Field::Creds);
            assert_eq!(path, &gone);
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&gone.display().to_string()), "{text}");
    assert!(text.contains("--nats-creds"), "{text}");
}

#[test]
fn broken_files_are_malformed_not_handshake_failures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = write(dir.path(), "junk", "not a creds file\n");
    let malformed = |c: NatsConnection| match c.prepare("t", "_T") {
        Err(ConnectionError::Malformed { field, .. }) => field,
        other => panic!("expected Malformed, got {other:?}"),
    };
    assert_eq!(
        malformed(NatsConnection {
            creds: Some(junk.clone()),
            ..NatsConnection::default()
        }),
        Field::Creds
    );
    assert_eq!(
        malformed(NatsConnection {
            nkey: Some(junk.clone()),
            ..NatsConnection::default()
        }),
        Field::Nkey
    );
    let account = nkeys::KeyPair::new_account().seed().expect("seed");
    let account = write(dir.path(), "account.nk", &account);
    let err = NatsConnection {
        nkey: Some(account),
        ..NatsConnection::default()
    }
    .prepare("t", "_T")
    .expect_err("account seed refused");
    assert!(err.to_string().contains("SA..."), "{err}");
    assert_eq!(
        malformed(NatsConnection {
            tls_ca: Some(junk.clone()),
            ..NatsConnection::default()
        }),
        Field::TlsCa
    );
}

#[test]
fn a_good_seed_file_is_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let seed = nkeys::KeyPair::new_user().seed().expect("seed");
    let path = write(dir.path(), "user.nk", &format!("{seed}\n"));
    let prepared = NatsConnection {
        nkey: Some(path),
        ..NatsConnection::new("tls://a:1, b:2")
    }
    .prepare("t", "_INBOX_a")
    .expect("prepares");
    assert_eq!(prepared.servers.len(), 2);
    assert_eq!(prepared.shown_url, "tls://a:1,b:2");
}

#[test]
fn inbox_prefixes_are_plain_subjects() {
    let c = NatsConnection::default();
    for good in [
        GATEWAY_INBOX_PREFIX,
        CLI_INBOX_PREFIX,
        "_INBOX_deployer",
        "a.b",
    ] {
        assert!(c.prepare("t", good).is_ok(), "{good}");
    }
    assert_eq!(agent_inbox_prefix("billing"), "_INBOX_billing");
    for bad in ["", "a.>", "_INBOX_*", "a..b", "a b", "a."] {
        assert!(
            matches!(
                c.prepare("t", bad),
                Err(ConnectionError::InboxPrefix { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn env_vars_name_only_what_is_set() {
    let c = NatsConnection {
        token: Some(Secret::new("t")),
        tls_ca: Some("/ca.pem".into()),
        ..NatsConnection::new("nats://a:1,nats://b:2")
    };
    let vars: Vec<(String, String)> = c
        .env_vars()
        .into_iter()
        .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        vars,
        vec![
            (
                "MESH_NATS_URL".to_string(),
                "nats://a:1,nats://b:2".to_string()
            ),
            ("MESH_NATS_TOKEN".to_string(), "t".to_string()),
            ("MESH_NATS_TLS_CA".to_string(), "/ca.pem".to_string()),
        ]
    );
}
