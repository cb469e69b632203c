//! The garbage run: while a legitimate sender's intents must all be delivered in order, random
//! bytes with random headers land on every subject the gateway reads: intent subjects (valid
//! and invalid tokens), unpark markers, parking notices, heartbeats, the kill and policy
//! buckets. The gateway stays up, the legitimate intents arrive in order with none lost, a
//! sender whose kill flag holds garbage is refused (fail closed), and no intent that breaks the
//! rules reaches any inbox, while garbage that keeps the rules is delivered like any intent.
//!
//! The garbage is drawn from proptest strategies with a seed printed at the start and in every
//! failure; `AGENT_MESH_GARBAGE_SEED=<n>` runs one seed again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::{Event, HeaderMap};
use futures::StreamExt;
use mesh_schemas::{decode, FenceAck, KillRecord, KillState};
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::{eventually, http, init_tracing, Mesh, DEADLINE};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Legitimate intents A sends to B, numbered from 0.
const LEGIT: usize = 150;
/// Intents the sender with a garbage kill flag tries to send.
const FROM_KILLED: usize = 20;
/// Garbage messages drawn for one run.
const GARBAGE: usize = 1200;
/// Garbage senders the operator's identity puts on intent subjects (never A or V).
const SENDERS: [&str; 4] = ["s0", "s1", "s2", "s3"];
/// Recipients of garbage intents: Z serves its inbox; the others serve nobody.
const RECIPIENTS: [&str; 4] = ["Z", "Z", "r0", "r1"];

/// Agents of the run and garbage senders: a random token is never one of them (a garbage kill
/// flag for B, or an intent from A, would be an operator's action, not garbage).
const IN_USE: [&str; 11] = ["A", "B", "V", "Z", "g", "s0", "s1", "s2", "s3", "r0", "r1"];

/// Who publishes a piece of garbage.
#[derive(Clone, Copy, Debug)]
enum By {
    /// The operator's identity: allowed all of `mesh.>` and the buckets.
    Operator,
    /// Agent `g`: allowed its own intent and heartbeat subjects only.
    AgentG,
}

/// One piece of garbage, drawn before the run.
#[derive(Clone, Debug)]
struct Piece {
    by: By,
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    /// For an intent to Z: its number, and whether it keeps every rule of the contract (then
    /// it must be delivered, else it must not).
    to_z: Option<(usize, bool)>,
}

fn draw<S: Strategy>(runner: &mut TestRunner, s: S) -> S::Value {
    s.new_tree(runner).expect("strategy draws").current()
}

/// A token that is a valid agent id, or one that is not (a bad character, too long).
fn token(valid: Vec<&'static str>) -> impl Strategy<Value = String> {
    let valid: Vec<String> = valid.into_iter().map(str::to_string).collect();
    prop_oneof![
        6 => prop::sample::select(valid),
        1 => "[A-Za-z0-9_-]{0,4}[$*>#é%][A-Za-z0-9_-]{0,4}",
        1 => "[a-z]{65,70}",
        1 => "[A-Za-z0-9_-]{1,10}".prop_filter("not a name in use", |t| !IN_USE.contains(&t.as_str())),
    ]
}

/// Header names the gateway, an agent or a KV reader reads, and others. `KV-Operation` gets
/// garbage, never `DEL` or `PURGE`, and no other `Nats-*` header but the message id is set: a
/// delete, a purge or a rollup is an operator's action on a bucket, not garbage in it.
fn header() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "KV-Operation",
            "Mesh-From",
            "Mesh-Action",
            "Mesh-Attempt",
            "Mesh-Intent-Id",
            "Mesh-Status",
            "Mesh-Reason",
            "Mesh-Instance",
            "Mesh-Cost-Total",
            "Mesh-Unpark-Reply",
        ])
        .prop_map(str::to_string),
        "X-[A-Za-z]{1,10}",
    ];
    (name, "[ -~]{0,40}").prop_filter("no delete or purge", |(k, v)| {
        k != "KV-Operation" || !matches!(v.as_str(), "DEL" | "PURGE")
    })
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(header(), 0..4)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

/// The contract's rule for an agent id, stated again here so the test does not trust the
/// parser it tests.
fn is_id(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An intent from `from` (operator or agent g) with random tokens, headers and payload.
fn intent(runner: &mut TestRunner, by: By, from: String, n: usize) -> Piece {
    let to = draw(runner, token(RECIPIENTS.to_vec()));
    let action = draw(
        runner,
        prop_oneof![
            4 => "[a-z]{1,6}(\\.[a-z]{1,6}){0,2}",
            1 => "[a-z]{1,6}\\.\\.[a-z]{1,6}",
            1 => "[a-z]{0,3}[*>][a-z]{0,3}",
            1 => "[a-z]{1,6}\\.",
        ],
    );
    let mut headers = draw(runner, headers());
    // Nats-Msg-Id: absent, valid (unique, so JetStream keeps it), or past 256 bytes.
    let msg_id = draw(runner, prop::option::of((any::<bool>(), "[ -~]{0,20}")));
    let mut valid = is_id(&from)
        && is_id(&to)
        && action
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(['*', '>']));
    if let Some((long, text)) = msg_id {
        let id = if long {
            format!("g{n}-{text}{}", "x".repeat(260))
        } else {
            format!("g{n}-{text}")
        };
        valid &= id.len() <= 256;
        headers.push(("Nats-Msg-Id".to_string(), id));
    }
    let cost = draw(
        runner,
        prop::option::of(prop::sample::select(vec![
            ("0", true),
            ("0.25", true),
            (" 3 ", true),
            ("-1", false),
            ("NaN", false),
            ("ten", false),
            ("1,5", false),
            ("", false),
        ])),
    );
    if let Some((text, ok)) = cost {
        valid &= ok;
        headers.push(("Mesh-Cost".to_string(), text.to_string()));
    }
    let mut payload = format!("g{n}:").into_bytes();
    payload.extend(draw(runner, bytes()));
    Piece {
        by,
        to_z: (to == "Z").then_some((n, valid)),
        subject: format!("mesh.intent.{from}.{to}.{action}"),
        headers,
        payload,
    }
}

/// Draws the garbage of one run from `seed`.
fn garbage(seed: u64) -> Vec<Piece> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let r = &mut runner;
    let any_key = || token(vec!["A", "B", "Z", "_default", "k0", "k1"]);
    (0..GARBAGE)
        .map(|n| {
            let (subject, by) = match draw(r, 0..9u8) {
                0 | 1 => {
                    let from = draw(r, token(SENDERS.to_vec()));
                    return intent(r, By::Operator, from, n);
                }
                2 => return intent(r, By::AgentG, "g".to_string(), n),
                3 => (format!("mesh.hb.{}", draw(r, any_key())), By::Operator),
                4 => ("mesh.hb.g".to_string(), By::AgentG),
                5 => (
                    format!("mesh.gw.parked.{}", draw(r, any_key())),
                    By::Operator,
                ),
                6 => (
                    format!("mesh.intent._mesh._unpark.{}", draw(r, any_key())),
                    By::Operator,
                ),
                // Kill flags of keys no sender here uses, and of V (which stays unreadable).
                7 => {
                    let k = draw(r, token(vec!["V", "k0", "k1"]));
                    (format!("$KV.mesh-kill.{k}"), By::Operator)
                }
                _ => (
                    format!("$KV.mesh-policy.{}", draw(r, any_key())),
                    By::Operator,
                ),
            };
            let mut payload = draw(r, bytes());
            while subject == "$KV.mesh-kill.V" && decode::<KillRecord>(&payload).is_ok() {
                payload = draw(r, bytes());
            }
            Piece {
                by,
                subject,
                headers: draw(r, headers()),
                payload,
                to_z: None,
            }
        })
        .collect()
}

async fn publish(client: &async_nats::Client, p: &Piece) {
    let mut h = HeaderMap::new();
    for (k, v) in &p.headers {
        h.insert(k.as_str(), v.as_str());
    }
    // Refused subjects (a wildcard, say) are part of the garbage: the client or the server
    // refuses them, and the run goes on.
    let _ = client
        .publish_with_headers(p.subject.clone(), h, p.payload.clone().into())
        .await;
}

/// The next permissions violation the server reports to a connection.
async fn violation(events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> String {
    loop {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(Event::ServerError(e))) => return e.to_string(),
            Ok(Some(_)) => continue,
            other => panic!("the server reported no error: {other:?}"),
        }
    }
}

/// The number a garbage intent carries in its payload (`g<n>:`).
fn number(payload: &[u8]) -> Option<usize> {
    let end = payload.iter().position(|b| *b == b':')?;
    std::str::from_utf8(payload.get(1..end)?).ok()?.parse().ok()
}

#[tokio::test]
async fn garbage_on_every_subject_the_gateway_reads_leaves_good_traffic_whole() {
    init_tracing();
    let seed = std::env::var("AGENT_MESH_GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(mesh_schemas::now_unix_ms);
    eprintln!("garbage run: seed {seed} (AGENT_MESH_GARBAGE_SEED={seed} runs it again)");
    let started = std::time::Instant::now();
    let pieces = garbage(seed);

    let mesh = Mesh::start();
    let (gw, addr) = GatewayTask::start_observed(&mesh, "gw1").await;
    let op = mesh.operator().await;
    wait_live(&op, &["gw1"]).await;
    let to_b = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", to_b.clone(), true).await;
    let to_z = Recorder::default();
    let _z = agents::serve(&mesh.agent("Z").await, "Z", "z1", to_z.clone(), true).await;
    let v = mesh.agent("V").await;
    let refused_v = agents::rejections(&v, "V").await;

    // V's kill flag holds garbage from the start: the gateway must treat V as killed.
    let js = async_nats::jetstream::new(op.clone());
    let kill = js.get_key_value("mesh-kill").await.expect("kill bucket");
    let mut fenced = op.subscribe("mesh.gw.fenced.V").await.expect("subscribe");
    mesh_tests::registered(&op).await;
    let revision = kill
        .put("V", bytes::Bytes::from_static(b"\x93\xc1 not a record"))
        .await
        .expect("put garbage");
    tokio::time::timeout(DEADLINE, async {
        while let Some(m) = fenced.next().await {
            if let Ok(ack) = decode::<FenceAck>(&m.payload) {
                if ack.revision >= revision {
                    return ack.state;
                }
            }
        }
        panic!("fence acks ended");
    })
    .await
    .map(|state| {
        assert_eq!(
            state,
            KillState::Killed,
            "seed {seed}: garbage read as a resume"
        )
    })
    .expect("the gateway confirms V's garbage flag");

    // What NATS refuses agent g, whatever the gateway would do with it.
    let (g, mut g_events) = mesh.agent_watched("g").await;
    for subject in [
        "mesh.intent.A.B.work",
        "$KV.mesh-kill.V",
        "$KV.mesh-policy._default",
    ] {
        g.publish(subject, "garbage".into()).await.expect("sent");
        let err = violation(&mut g_events).await;
        assert!(
            err.contains(&format!(
                "Permissions Violation for Publish to \"{subject}\""
            )),
            "{subject}: {err}"
        );
    }

    // The run: A's intents, V's, and the garbage, all at once.
    let done = Arc::new(AtomicBool::new(false));
    let js_a = async_nats::jetstream::new(mesh.agent("A").await);
    let legit = tokio::spawn({
        let done = done.clone();
        async move {
            for i in 0..LEGIT {
                agents::send(&js_a, "A", "B", "work", i.to_string())
                    .await
                    .expect("A's intent stored");
            }
            done.store(true, Ordering::SeqCst);
        }
    });
    let js_v = async_nats::jetstream::new(v.clone());
    let killed = tokio::spawn(async move {
        for i in 0..FROM_KILLED {
            agents::send(&js_v, "V", "B", "work", format!("v{i}"))
                .await
                .expect("V's intent stored");
        }
    });
    let published = tokio::spawn({
        let (op, g, done) = (op.clone(), g.clone(), done.clone());
        let pieces = pieces.clone();
        async move {
            let mut sent = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                // At least a third of the garbage, then only while A is still sending.
                if i >= GARBAGE / 3 && done.load(Ordering::SeqCst) {
                    break;
                }
                publish(
                    match p.by {
                        By::Operator => &op,
                        By::AgentG => &g,
                    },
                    p,
                )
                .await;
                sent.push(p.clone());
                if i % 25 == 0 {
                    let _ = op.flush().await;
                    let _ = g.flush().await;
                }
            }
            let _ = op.flush().await;
            let _ = g.flush().await;
            sent
        }
    });
    legit.await.expect("legitimate sender");
    killed.await.expect("killed sender");
    let sent = published.await.expect("garbage publisher");

    // Good traffic whole: A's intents all delivered, in order.
    to_b.wait_unique("A", LEGIT).await;
    to_b.assert_in_order("A", LEGIT);
    // V fails closed: every intent refused 403, none delivered.
    refused_v.wait_for(FROM_KILLED).await;
    let refusals = refused_v.all();
    assert!(
        refusals
            .iter()
            .all(|(status, reason, _)| *status == 403 && reason.contains("unreadable")),
        "seed {seed}: {refusals:?}"
    );
    // Garbage intents to Z: those that keep the rules arrive, the others never do.
    let want: BTreeSet<usize> = sent
        .iter()
        .filter_map(|p| p.to_z)
        .filter_map(|(n, ok)| ok.then_some(n))
        .collect();
    let broken: BTreeSet<usize> = sent
        .iter()
        .filter_map(|p| p.to_z)
        .filter_map(|(n, ok)| (!ok).then_some(n))
        .collect();
    eprintln!(
        "garbage run: {} pieces published, {} valid and {} invalid intents to Z",
        sent.len(),
        want.len(),
        broken.len()
    );
    let got_z = || -> BTreeSet<usize> {
        to_z.all()
            .iter()
            .filter_map(|r| number(&r.payload))
            .collect()
    };
    eventually(
        &format!("seed {seed}: every valid garbage intent at Z"),
        || {
            let done = want.is_subset(&got_z());
            async move { done }
        },
    )
    .await;
    // Another intent after all of them: once it is in, everything before it was decided.
    let js_g = async_nats::jetstream::new(g.clone());
    agents::send(&js_g, "g", "Z", "last", "g999999:")
        .await
        .expect("stored");
    eventually(&format!("seed {seed}: the last intent at Z"), || {
        let done = got_z().contains(&999_999);
        async move { done }
    })
    .await;
    let got = got_z();
    let wrongly: Vec<&Piece> = sent
        .iter()
        .filter(|p| p.to_z.is_some_and(|(n, ok)| !ok && got.contains(&n)))
        .collect();
    assert!(
        wrongly.is_empty(),
        "seed {seed}: intents that break the rules were delivered: {wrongly:?}"
    );
    for r in to_z.all() {
        // The sender is the subject's, never a header's.
        let n = number(&r.payload).expect("numbered");
        if n == 999_999 {
            continue;
        }
        let p = sent.iter().find(|p| p.to_z.is_some_and(|(m, _)| m == n));
        let from = p.and_then(|p| p.subject.split('.').nth(2));
        assert_eq!(Some(r.from.as_str()), from, "seed {seed}: delivery {n}");
    }
    let strangers: Vec<String> = to_b
        .all()
        .iter()
        .filter(|r| r.from != "A")
        .map(|r| r.from.clone())
        .collect();
    assert!(strangers.is_empty(), "seed {seed}: B got {strangers:?}");

    // The gateway is still up and live.
    let (status, body) = http::get(addr, "/healthz").await.expect("healthz answers");
    assert_eq!(status, 200, "seed {seed}: {body}");
    wait_live(&op, &["gw1"]).await;
    gw.stop().await;
    eprintln!("garbage run: seed {seed} passed in {:?}", started.elapsed());
}
