//! `mesh-cli status` lists every agent the gateways have seen as a sender or a recipient, with
//! what is known (last intent sent and received, pending, rejected), also one that never sent a
//! heartbeat and was never killed; and it reads its buckets in one pass at 10,000 agents.

use std::time::{Duration, Instant};

use async_nats::{jetstream, ConnectOptions};
use futures::StreamExt;
use mesh_schemas::ActivityRecord;
use mesh_testkit::NatsServer;
use serde_json::Value;

use crate::up::{build_gateway, start_up, stop};
use crate::{assert_exit, json, mesh_cli, stdout};

const DEADLINE: Duration = Duration::from_secs(30);

pub async fn agent(url: &str, env: &[(&str, &str)], id: &str) -> async_nats::Client {
    let o = mesh_cli(&["agent", "add", id], env).await;
    assert_exit(&o, 0);
    let creds = String::from_utf8(o.stdout).expect("utf-8");
    ConnectOptions::with_credentials(&creds)
        .expect("creds")
        .custom_inbox_prefix(format!("_INBOX_{id}"))
        .connect(url)
        .await
        .expect("agent connects")
}

fn find<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["agents"]
        .as_array()?
        .iter()
        .find(|a| a["agent"] == id)
}

/// The issue's scene: after `mesh-cli up`, `billing` serves its inbox and `deployer` sends it an
/// intent that is delivered, and one to `ghost`, which nobody serves. None of them heartbeats
/// or is killed; status lists all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_agents_seen_as_senders_or_recipients_without_heartbeats() {
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
    let billing = agent(&url, &env, "billing").await;
    let deployer = agent(&url, &env, "deployer").await;
    let mut inbox = billing
        .queue_subscribe("mesh.agent.billing.inbox", "billing".into())
        .await
        .expect("subscribe");
    billing.flush().await.expect("flush");
    let js = jetstream::new(deployer);
    for subject in [
        "mesh.intent.deployer.billing.invoice.create",
        "mesh.intent.deployer.ghost.report",
    ] {
        js.publish(subject, "1".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let msg = tokio::time::timeout(DEADLINE, inbox.next())
        .await
        .expect("delivered in time")
        .expect("delivery");
    billing
        .publish(msg.reply.expect("a request"), "".into())
        .await
        .expect("ack");

    // The gateway writes what it saw within a second or so: ask until it shows.
    let started = Instant::now();
    let status = loop {
        let o = mesh_cli(&["status", "--json"], &env).await;
        assert_exit(&o, 0);
        let status = json(&o);
        let listed = |id| find(&status, id).is_some();
        let received =
            find(&status, "billing").is_some_and(|b| b["last_received_unix_ms"].is_u64());
        if listed("deployer") && listed("ghost") && received {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "agents not listed: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deployer = find(&status, "deployer").expect("deployer");
    assert!(deployer["last_sent_unix_ms"].is_u64(), "{deployer}");
    assert_eq!(deployer["health"], "unknown", "never heartbeated");
    assert_eq!(deployer["state"], "active");
    let billing_row = find(&status, "billing").expect("billing");
    assert!(
        billing_row["last_addressed_unix_ms"].is_u64(),
        "{billing_row}"
    );
    assert_eq!(
        billing_row["last_sent_unix_ms"],
        Value::Null,
        "it sent nothing"
    );
    let ghost = find(&status, "ghost").expect("ghost");
    assert_eq!(ghost["last_received_unix_ms"], Value::Null, "{ghost}");
    assert_eq!(ghost["pending"], 1, "its intent waits: {ghost}");

    let o = mesh_cli(&["status"], &env).await;
    assert_exit(&o, 0);
    let text = stdout(&o);
    assert!(!text.contains("no agents yet"), "{text}");
    let header = text.lines().next().expect("header");
    assert!(
        header.contains("LAST SENT") && header.contains("LAST RECEIVED"),
        "{header}"
    );
    for id in ["billing", "deployer", "ghost"] {
        assert!(text.lines().any(|l| l.starts_with(id)), "{id} in\n{text}");
    }
    stop(child, "INT").await;
}

/// 10,000 agents seen by two replicas: every one is listed, with the latest of the replicas'
/// sightings. (How long it takes is printed; speed claims belong in a benchmark.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_ten_thousand_seen_agents_with_the_latest_sighting() {
    let server = NatsServer::start();
    let url = server.url();
    // mesh-cli creates the mesh's objects.
    let o = mesh_cli(&["kill", "k0", "--reason", "r", "--nats-url", &url], &[]).await;
    assert_exit(&o, 0);
    let client = async_nats::connect(&url).await.expect("connect");
    let js = jetstream::new(client);
    let kv = js.get_key_value("mesh-activity").await.expect("bucket");
    const N: usize = 10_000;
    futures::stream::iter(0..N)
        .for_each_concurrent(256, |i| {
            let kv = kv.clone();
            async move {
                for (gw, sent) in [("gw1", 1_000 + i as u64), ("gw2", 500)] {
                    let mut rec = ActivityRecord::new(format!("a{i}"), gw);
                    rec.last_sent_unix_ms = Some(sent);
                    let bytes = mesh_schemas::encode(&rec).expect("encodes");
                    kv.put(format!("a{i}.{gw}"), bytes.into())
                        .await
                        .expect("put");
                }
            }
        })
        .await;

    let started = Instant::now();
    let o = mesh_cli(&["status", "--json", "--nats-url", &url], &[]).await;
    let took = started.elapsed();
    assert_exit(&o, 0);
    let status = json(&o);
    let agents = status["agents"].as_array().expect("agents");
    eprintln!("status of {} agents took {took:?}", agents.len());
    assert_eq!(agents.len(), N + 1, "10,000 seen and k0 killed");
    let a42 = find(&status, "a42").expect("a42");
    assert_eq!(a42["last_sent_unix_ms"], 1_042, "the later of two replicas");
    assert_eq!(find(&status, "k0").expect("k0")["state"], "killed");
}
