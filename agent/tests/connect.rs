//! `Agent::connect` against a nats-server whose agent user has the permissions of a secured
//! mesh (contract §9): publish its own intents, subscribe only `_INBOX_<id>.>` and its own
//! agent subjects. JetStream's acknowledgement of an intent reaches the agent only because
//! `Agent::connect` uses the inbox prefix `_INBOX_<id>`.

use async_nats::jetstream::{self, stream};
use mesh_agent::{Agent, AgentId, ConnectError, NatsConnection, Secret};
use mesh_testkit::NatsServer;

const CONF: &str = r#"
jetstream: enabled
authorization {
  users = [
    { user: admin, password: admin }
    {
      user: alice, password: "alice-pw"
      permissions: {
        publish: { allow: ["mesh.intent.alice.>", "mesh.hb.alice"] }
        subscribe: { allow: ["_INBOX_alice.>", "mesh.agent.alice.>"] }
      }
    }
  ]
}
"#;

fn id(s: &str) -> AgentId {
    AgentId::new(s).expect("valid id")
}

#[tokio::test]
async fn an_agent_with_scoped_permissions_gets_its_acks_on_its_own_inbox_prefix() {
    let server = NatsServer::start_with_conf(CONF);
    let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin".into())
        .connect(server.url())
        .await
        .expect("admin connects");
    let mut intents = jetstream::new(admin)
        .create_stream(stream::Config {
            name: "MESH_INTENTS".into(),
            subjects: vec!["mesh.intent.*.*.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");

    let nats = NatsConnection {
        user: Some("alice".into()),
        password: Some(Secret::new("alice-pw")),
        ..NatsConnection::new(format!("{url},{url}", url = server.url()))
    };
    let alice = Agent::connect(id("alice"), &nats)
        .await
        .expect("alice connects");
    assert_eq!(alice.id(), &id("alice"));
    let receipt = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        alice.send(&id("bob"), "deploy.service", "v1"),
    )
    .await
    .expect("the ack arrived in time")
    .expect("stored");
    assert_eq!(receipt.stream_seq, 1);
    assert_eq!(intents.info().await.expect("info").state.messages, 1);

    let wrong = NatsConnection {
        password: Some(Secret::new("guess")),
        ..nats
    };
    let err = Agent::connect(id("alice"), &wrong)
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectError::Auth { .. }), "{err:?}");
}
