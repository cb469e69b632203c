//! mesh-agent against a real nats-server, with the gateway played by the test: the test creates
//! the intents stream itself and sends deliveries and notices by hand.
//!
//! The server is secured as `mesh-cli up` runs it: each agent connects with credentials of its
//! own (and inbox prefix `_INBOX_<id>`), the test's "gateway" with the gateways' credentials.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use mesh_agent::{Agent, AgentId, InvalidCost, SendError, SendOptions};
use mesh_schemas::headers::{
    MESH_ACTION, MESH_ATTEMPT, MESH_COST, MESH_COST_TOTAL, MESH_FROM, MESH_INSTANCE,
    MESH_INTENT_ID, MESH_REASON, MESH_STATUS, NATS_MSG_ID,
};
use mesh_schemas::{ControlNotice, KillRecord, KillState, MeshNames, RejectionNotice};
use mesh_tests::Mesh;

const WAIT: Duration = Duration::from_secs(5);

fn id(s: &str) -> AgentId {
    AgentId::new(s).expect("valid id")
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn delivery_headers(intent: &str, from: &str, attempt: u32) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MESH_INTENT_ID, intent);
    h.insert(MESH_FROM, from);
    h.insert(MESH_ACTION, "deploy.service");
    h.insert(MESH_ATTEMPT, attempt.to_string().as_str());
    h
}

#[tokio::test]
async fn send_stores_the_intent_with_its_id_and_cost() {
    let mesh = Mesh::start();
    let client = mesh.agent("alice").await;
    let alice = Agent::new(client, id("alice"));

    // Before the gateway has made the intents stream, nothing captures the subject: the error
    // says so (and nothing is stored).
    assert!(matches!(
        alice.send(&id("bob"), "x", "").await,
        Err(SendError::NoStream { .. })
    ));

    let js = jetstream::new(mesh.gateway_client().await);
    let mut intents = js
        .create_stream(stream::Config {
            name: "MESH_INTENTS".into(),
            subjects: vec!["mesh.intent.*.*.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");

    let receipt = alice
        .send_with(
            &id("bob"),
            "deploy.service",
            "v1",
            SendOptions::default().msg_id("intent-1").cost_usd(0.25),
        )
        .await
        .expect("send");
    assert_eq!(receipt.intent_id, "intent-1");
    assert_eq!(receipt.stream_seq, 1);
    assert!(!receipt.duplicate);

    let stored = intents.get_raw_message(1).await.expect("stored");
    assert_eq!(
        stored.subject.as_str(),
        "mesh.intent.alice.bob.deploy.service"
    );
    assert_eq!(
        stored.headers.get(NATS_MSG_ID).map(|v| v.as_str()),
        Some("intent-1")
    );
    assert_eq!(
        stored.headers.get(MESH_COST).map(|v| v.as_str()),
        Some("0.25")
    );
    assert_eq!(&stored.payload[..], b"v1");

    // A resend with the same id is deduplicated by JetStream.
    let again = alice
        .send_with(
            &id("bob"),
            "deploy.service",
            "v1",
            SendOptions::default().msg_id("intent-1"),
        )
        .await
        .expect("resend");
    assert!(again.duplicate);
    assert_eq!(again.stream_seq, 1);

    // A fresh id every time otherwise.
    let a = alice.send(&id("bob"), "x", "").await.expect("send");
    let b = alice.send(&id("bob"), "x", "").await.expect("send");
    assert_ne!(a.intent_id, b.intent_id);
    assert_eq!(intents.info().await.expect("info").state.messages, 3);

    // Refused before anything is sent.
    assert!(matches!(
        alice.send(&id("bob"), "deploy.*", "").await,
        Err(SendError::InvalidAction(_))
    ));
    assert!(matches!(
        alice
            .send_with(&id("bob"), "x", "", SendOptions::default().cost_usd(-1.0))
            .await,
        Err(SendError::InvalidCost(_))
    ));
}

/// In open mode (`mesh-cli up --insecure`), with the intents stream in place: under a prefix
/// no stream captures, the error says so. (In a secured mesh an agent's credentials cover its
/// mesh's prefix only, so a wrong prefix is refused by the server's permissions instead.)
#[tokio::test]
async fn send_under_a_prefix_no_stream_captures_says_so_in_open_mode() {
    let mesh = Mesh::insecure();
    let client = mesh.agent("alice").await;
    let js = jetstream::new(mesh.gateway_client().await);
    js.create_stream(stream::Config {
        name: "MESH_INTENTS".into(),
        subjects: vec!["mesh.intent.*.*.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let alice = Agent::new(client.clone(), id("alice"));
    alice.send(&id("bob"), "x", "").await.expect("send");

    let names = MeshNames {
        prefix: "other".into(),
        ..MeshNames::default()
    };
    let other = Agent::new(client, id("alice"))
        .with_names(names)
        .expect("valid prefix");
    assert!(matches!(
        other.send(&id("bob"), "x", "").await,
        Err(SendError::NoStream { .. })
    ));
}

#[tokio::test]
async fn inbox_is_registered_on_return_dedupes_and_ignores_strangers() {
    let mesh = Mesh::start();
    let agent_conn = mesh.agent("bob").await;
    let gateway = mesh.gateway_client().await;
    let bob = Agent::new(agent_conn, id("bob"));
    let mut inbox = bob.serve().await.expect("serve");

    // Right after serve returns, a request from another connection finds the subscriber.
    let first = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway
                .request_with_headers(
                    "mesh.agent.bob.inbox",
                    delivery_headers("i-1", "alice", 1),
                    "payload-1".into(),
                )
                .await
        })
    };
    let d = within("first delivery", inbox.next())
        .await
        .expect("delivery");
    assert_eq!(d.intent_id, "i-1");
    assert_eq!(d.from.as_str(), "alice");
    assert_eq!(d.action, "deploy.service");
    assert_eq!(d.attempt, 1);
    assert_eq!(&d.payload[..], b"payload-1");
    d.ack_with("done").await.expect("ack");
    let reply = within("the ack", first)
        .await
        .expect("task")
        .expect("ack reply");
    assert_eq!(&reply.payload[..], b"done");

    // While the inbox is polled, a redelivery of the acked intent is acknowledged by the inbox
    // itself and not yielded, and a message without the gateway's headers gets no answer and is
    // not yielded either.
    let reack = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway
                .request_with_headers(
                    "mesh.agent.bob.inbox",
                    delivery_headers("i-1", "alice", 2),
                    "payload-1".into(),
                )
                .await
        })
    };
    let stranger = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway
                .send_request(
                    "mesh.agent.bob.inbox",
                    async_nats::Request::new()
                        .payload("hi".into())
                        .timeout(Some(Duration::from_millis(500))),
                )
                .await
        })
    };
    let nothing = tokio::time::timeout(Duration::from_secs(1), inbox.next()).await;
    assert!(nothing.is_err(), "nothing may be yielded: {nothing:?}");
    let reply = within("the re-ack", reack)
        .await
        .expect("task")
        .expect("re-acked");
    assert!(reply.payload.is_empty());
    let stranger = within("the stranger", stranger).await.expect("task");
    assert!(stranger.is_err(), "a stranger's message must not be acked");

    // A delivery dropped without an ack is yielded again when the gateway redelivers it, and
    // a copy that arrives while the first is still being handled is skipped.
    let deliver = |intent: &'static str, attempt: u32| {
        let gateway = gateway.clone();
        async move {
            gateway
                .publish_with_reply_and_headers(
                    "mesh.agent.bob.inbox",
                    "gateway.reply",
                    delivery_headers(intent, "alice", attempt),
                    Bytes::new(),
                )
                .await
                .expect("publish");
            gateway.flush().await.expect("flush");
        }
    };
    deliver("i-2", 1).await;
    let held = within("i-2", inbox.next()).await.expect("delivery");
    assert_eq!((held.intent_id.as_str(), held.attempt), ("i-2", 1));
    deliver("i-2", 2).await; // still in progress: skipped
    deliver("i-3", 1).await;
    let next = within("i-3", inbox.next()).await.expect("delivery");
    assert_eq!(next.intent_id, "i-3");
    drop(held);
    deliver("i-2", 3).await;
    let again = within("i-2 again", inbox.next()).await.expect("delivery");
    assert_eq!((again.intent_id.as_str(), again.attempt), ("i-2", 3));
    assert!(again.is_redelivery());
}

#[tokio::test]
async fn rejections_and_control_notices_reach_the_agent() {
    let mesh = Mesh::start();
    let client = mesh.agent("alice").await;
    let gateway = mesh.gateway_client().await;
    let alice = Agent::new(client, id("alice"));
    let mut rejections = alice.rejections().await.expect("rejections");
    let mut control = alice.control().await.expect("control");

    let mut h = HeaderMap::new();
    h.insert(MESH_STATUS, "403");
    h.insert(MESH_REASON, "alice is killed: deployed 47 of 3");
    h.insert(MESH_INTENT_ID, "i-7");
    let body = RejectionNotice::new(
        "i-7",
        "mesh.intent.alice.bob.deploy",
        403,
        "alice is killed: deployed 47 of 3",
    );
    gateway
        .publish_with_headers(
            "mesh.agent.alice.rejected",
            h,
            mesh_schemas::encode(&body).expect("encode").into(),
        )
        .await
        .expect("publish");
    let notice = ControlNotice::new(id("alice"), &KillRecord::killed("deployed 47 of 3", "ops"));
    gateway
        .publish(
            "mesh.agent.alice.control",
            mesh_schemas::encode(&notice).expect("encode").into(),
        )
        .await
        .expect("publish");
    gateway.flush().await.expect("flush");

    let r = within("a rejection", rejections.next())
        .await
        .expect("rejection");
    assert_eq!(r.status, 403);
    assert_eq!(r.intent_id, "i-7");
    assert_eq!(r.subject, "mesh.intent.alice.bob.deploy");
    let c = within("a control notice", control.next())
        .await
        .expect("notice");
    assert_eq!(c.state, KillState::Killed);
    assert_eq!(c.reason, "deployed 47 of 3");
}

/// The instance and the cost total of one heartbeat.
fn beat_of(msg: &async_nats::Message) -> (String, f64) {
    let h = msg.headers.as_ref().expect("a heartbeat has headers");
    let instance = h
        .get(MESH_INSTANCE)
        .map(|v| v.as_str().to_string())
        .expect("Mesh-Instance");
    let total = h
        .get(MESH_COST_TOTAL)
        .map(|v| v.as_str().to_string())
        .expect("Mesh-Cost-Total");
    let total = mesh_schemas::headers::parse_cost(&total).expect("a plain decimal");
    (instance, total)
}

#[tokio::test]
async fn heartbeats_carry_the_instance_and_the_cumulative_cost_until_stopped() {
    let mesh = Mesh::start();
    let client = mesh.agent("deployer").await;
    // The gateway hears heartbeats.
    let watcher = mesh.gateway_client().await;
    let mut beats = watcher.subscribe("mesh.hb.deployer").await.expect("sub");
    // Let the server register the subscription before anything is published.
    mesh_tests::registered(&watcher).await;

    let deployer = Agent::new(client, id("deployer"));
    let every = Duration::from_millis(50);
    let one = deployer.heartbeat("pod-1", every);
    let two = deployer.heartbeat("pod-2", every);
    assert_eq!(one.instance(), "pod-1");

    // The first heartbeats come at once, with nothing reported yet.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let msg = within("first heartbeats", beats.next())
            .await
            .expect("beat");
        let (instance, total) = beat_of(&msg);
        assert!(msg.payload.is_empty());
        assert_eq!(total, 0.0, "{instance}");
        seen.insert(instance);
    }
    assert!(seen.contains("pod-1") && seen.contains("pod-2"));

    // Reports add up per instance; a bad amount is refused and changes nothing.
    assert_eq!(one.report_cost(0.25), Ok(0.25));
    assert_eq!(one.report_cost(0.5), Ok(0.75));
    assert_eq!(one.report_cost(-1.0), Err(InvalidCost(-1.0)));
    assert!(one.report_cost(f64::NAN).is_err());
    assert!(one.report_cost(f64::INFINITY).is_err());
    assert_eq!(one.cost_total(), 0.75);
    assert_eq!(two.report_cost(2.0), Ok(2.0));
    let mut totals = std::collections::HashMap::new();
    within("the totals on the heartbeats", async {
        while totals.get("pod-1") != Some(&0.75) || totals.get("pod-2") != Some(&2.0) {
            let (instance, total) = beat_of(&beats.next().await.expect("beat"));
            totals.insert(instance, total);
        }
    })
    .await;

    // Concurrent reports from many tasks are all counted.
    let one = std::sync::Arc::new(one);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                one.report_cost(0.125).expect("valid");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(one.cost_total(), 0.75 + 100.0);

    // Dropping one handle and stopping the other: a last heartbeat with the final total each,
    // then silence.
    drop(std::sync::Arc::try_unwrap(one).expect("the only handle"));
    two.report_cost(1.0).expect("valid");
    two.stop().await;
    let mut last = std::collections::HashMap::new();
    loop {
        match tokio::time::timeout(every * 6, beats.next()).await {
            Ok(Some(msg)) => {
                let (instance, total) = beat_of(&msg);
                last.insert(instance, total);
            }
            Ok(None) => panic!("subscription ended"),
            Err(_) => break, // silence
        }
    }
    assert_eq!(last.get("pod-1"), Some(&100.75), "{last:?}");
    assert_eq!(last.get("pod-2"), Some(&3.0), "{last:?}");
}

#[tokio::test]
async fn an_agent_on_the_default_inbox_prefix_is_told_why_its_sends_go_unacknowledged() {
    let mesh = Mesh::start();
    jetstream::new(mesh.gateway_client().await)
        .create_stream(stream::Config {
            name: "MESH_INTENTS".into(),
            subjects: vec!["mesh.intent.*.*.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    // Its own credentials, but the client library's default inbox prefix (`_INBOX`), where it
    // may not subscribe: the PubAck cannot reach it.
    let creds = mesh.agent_creds("lost").expect("creds");
    let client = async_nats::ConnectOptions::with_credentials(&creds)
        .expect("creds parse")
        .connect(mesh.url())
        .await
        .expect("connect");
    let lost = Agent::new(client, id("lost"));
    let err = lost
        .send(&id("bob"), "do", "x")
        .await
        .expect_err("no PubAck");
    assert!(
        matches!(err, SendError::InboxPrefix { ref want, .. } if want == "_INBOX_lost"),
        "{err}"
    );
    assert!(!err.is_retryable());
}
