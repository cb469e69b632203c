//! The identities of an auth directory against a real nats-server in operator mode: each role
//! connects with its own credentials and does what it must; an agent issued while the server
//! runs is accepted at once; a revoked agent is cut off and refused.

use std::time::Duration;

use async_nats::{jetstream, ConnectOptions, Event};
use futures::StreamExt;
use mesh_auth::{permissions, push, AuthDir};
use mesh_testkit::NatsServer;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(20);

struct Secured {
    _tmp: tempfile::TempDir,
    dir: AuthDir,
    server: NatsServer,
}

fn start() -> Secured {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = AuthDir::init(&tmp.path().join("auth"), "mesh").expect("init");
    let conf = dir.server_config(&tmp.path().join("jwt")).expect("conf");
    let server = NatsServer::start_with_conf(&conf);
    Secured {
        _tmp: tmp,
        dir,
        server,
    }
}

/// Connects with a creds file's text and inbox prefix; server errors arrive on the channel.
async fn connect(
    url: &str,
    creds: &str,
    inbox: &str,
) -> Result<(async_nats::Client, mpsc::UnboundedReceiver<Event>), async_nats::ConnectError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = ConnectOptions::with_credentials(creds)
        .expect("creds parse")
        .custom_inbox_prefix(inbox)
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(url)
        .await?;
    Ok((client, rx))
}

/// Returns once the server has processed this client's earlier `SUB`s: it echoes a message
/// the client sends to its own inbox.
async fn registered(client: &async_nats::Client) {
    let subject = client.new_inbox();
    let mut echo = client.subscribe(subject.clone()).await.expect("sub");
    client.publish(subject, "".into()).await.expect("pub");
    tokio::time::timeout(DEADLINE, echo.next())
        .await
        .expect("echo in time")
        .expect("echo");
}

async fn next_violation(events: &mut mpsc::UnboundedReceiver<Event>) -> String {
    loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(Event::ServerError(e))) => return e.to_string(),
            Ok(Some(_)) => continue,
            other => panic!("no server error came: {other:?}"),
        }
    }
}

#[tokio::test]
async fn roles_connect_and_an_agent_issued_later_is_accepted_then_revoked() {
    let s = start();
    let url = s.server.url();
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).expect("creds");

    // The operator creates the intents stream; the gateway can read it.
    let (op, _) = connect(
        &url,
        &read(s.dir.operator_creds()),
        permissions::OPERATOR_INBOX,
    )
    .await
    .expect("operator connects");
    let js = jetstream::new(op.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: "MESH_INTENTS".into(),
        subjects: vec!["mesh.intent.>".into()],
        ..Default::default()
    })
    .await
    .expect("operator creates the stream");
    let (gw, _) = connect(
        &url,
        &read(s.dir.gateway_creds()),
        permissions::GATEWAY_INBOX,
    )
    .await
    .expect("gateway connects");
    jetstream::new(gw)
        .get_stream("MESH_INTENTS")
        .await
        .expect("gateway reads the stream");

    // An agent issued now, with the server running and untouched.
    let alice = s.dir.add_agent("alice", None).expect("add");
    let (agent, mut events) = connect(&url, &alice.creds, &permissions::agent_inbox("alice"))
        .await
        .expect("agent connects");
    let ack = jetstream::new(agent.clone())
        .publish("mesh.intent.alice.bob.do", "x".into())
        .await
        .expect("publish")
        .await
        .expect("stored with a PubAck in its own inbox");
    assert_eq!(ack.stream, "MESH_INTENTS");

    // As someone else: refused by the server.
    agent
        .publish("mesh.intent.bob.alice.do", "x".into())
        .await
        .expect("sent");
    let err = next_violation(&mut events).await;
    assert!(
        err.contains("Permissions Violation for Publish to \"mesh.intent.bob.alice.do\""),
        "{err}"
    );

    // Revoked: the live connection is closed and a new one refused.
    let (revoked, account) = s.dir.revoke_agent("alice").expect("revoke");
    assert_eq!(revoked.len(), 1);
    let (sys, _) = connect(
        &url,
        &read(s.dir.system_creds()),
        permissions::OPERATOR_INBOX,
    )
    .await
    .expect("system user connects");
    push::push_account(&sys, &account, Duration::from_secs(5))
        .await
        .expect("pushed");
    loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(Event::Disconnected)) | Ok(Some(Event::Closed)) | Ok(None) => break,
            Ok(Some(_)) => continue,
            Err(_) => panic!("the revoked agent was not disconnected"),
        }
    }
    let refused = ConnectOptions::with_credentials(&alice.creds)
        .expect("creds")
        .custom_inbox_prefix(permissions::agent_inbox("alice"))
        .connect(&url)
        .await;
    assert!(refused.is_err(), "a revoked agent reconnected");

    // Another agent is unaffected, and alice can be issued anew.
    let again = s.dir.add_agent("alice", None).expect("re-add");
    let (fresh, _) = connect(&url, &again.creds, &permissions::agent_inbox("alice"))
        .await
        .expect("re-issued agent connects");
    let mut sub = fresh
        .subscribe("mesh.agent.alice.inbox")
        .await
        .expect("sub");
    registered(&fresh).await;
    op.publish("mesh.agent.alice.inbox", "hi".into())
        .await
        .expect("pub");
    let msg = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("in time")
        .expect("msg");
    assert_eq!(&msg.payload[..], b"hi");
}
