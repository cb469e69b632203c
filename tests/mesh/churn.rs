//! Kill and resume under churn (issue 9): a kill or resume never fails on an internal race
//! between the operator pausing or resuming a parked consumer and the shared lane parking
//! (creating) or unparking (deleting) it, and every confirmed kill holds.
//!
//! The suite runs [`CYCLES_IN_SUITE`] kill/resume cycles; the full 1,000 run with
//! `AGENT_MESH_CHURN_CYCLES=1000 cargo test -p mesh-tests --test mesh churn::`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use mesh_cli::mesh::Mesh as CliMesh;
use mesh_cli::switch::Switch;
use mesh_cli::CliConfig;
use mesh_gateway::{setup, GatewayConfig};
use mesh_schemas::{AgentId, KillState};
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::{wait_live, GatewayProcess};
use mesh_tests::{init_tracing, operator, Mesh, DEADLINE};

/// Cycles in the suite: sized so that the test stays well under 90 s on a loaded 2-core CI
/// machine (see the report of each run on stderr).
const CYCLES_IN_SUITE: usize = 120;

/// Intents per sender stored and not yet delivered, at most.
const WINDOW: usize = 50;

/// Recipients killed and resumed side by side, each with a sender flooding it.
const AGENTS: usize = 4;

#[tokio::test]
async fn a_pause_or_resume_racing_a_delete_of_the_parked_consumer_never_fails() {
    init_tracing();
    let mesh = Mesh::start();
    let js = jetstream::new(mesh.gateway_client().await);
    let cfg = GatewayConfig::default();
    let objects = setup::ensure(&js, &cfg).await.expect("mesh objects");
    let stream = &objects.intents;
    let to = AgentId::new("racer").expect("id");
    let name = cfg.names.inbound_consumer(&to);
    let mut failures = Vec::new();
    // The lane deletes `in_<id>` when it unparks and replaces it when it parks again, while
    // mesh-cli and every replica's fence pause or resume it.
    for round in 0..300 {
        setup::create_parked_consumer(stream, &cfg, &to, 1, &[], false)
            .await
            .expect("create the parked consumer");
        let held = round % 2 == 0;
        let (deleted, hold) = tokio::join!(
            stream.delete_consumer(&name),
            setup::set_hold(stream, &cfg, &to, held)
        );
        deleted.expect("delete the parked consumer");
        if let Err(e) = hold {
            failures.push(e.chain());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 300 holds failed against a delete, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_resume_cycles_under_churn_never_fail_and_every_kill_holds() {
    // nats-server 2.11.11 stopped answering (PubAcks, a kill flag's put, even a stream info
    // within 30 s) under this churn in 2 of 4 runs, at round 0, not yet understood (limit 12 in
    // docs/GUARANTEES.md); the race test above runs on every release.
    let version = mesh_testkit::nats_server_version().expect("nats-server version");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    if (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (2, 12) {
        eprintln!("churn: not run on nats-server {version} (limit 12 in docs/GUARANTEES.md)");
        return;
    }
    // Not a MESH_* name: the gateway processes inherit this environment and refuse those
    // they do not know.
    let cycles = match std::env::var("AGENT_MESH_CHURN_CYCLES") {
        Ok(n) => n
            .parse()
            .expect("AGENT_MESH_CHURN_CYCLES is a number of kill/resume cycles"),
        Err(_) => CYCLES_IN_SUITE,
    };
    churn(cycles).await;
}

/// `cycles` kill/resume cycles over [`AGENTS`] recipients side by side, two gateway processes,
/// a sender flooding each recipient throughout: every kill and resume succeeds as mesh-cli's
/// own code runs it, nothing reaches a recipient between its confirmed kill and its resume,
/// and at the end every intent has arrived, in order.
async fn churn(cycles: usize) {
    init_tracing();
    let setup_started = Instant::now();
    let mesh = Mesh::start();
    let _g1 = GatewayProcess::start_in(&mesh, "gw1");
    let _g2 = GatewayProcess::start_in(&mesh, "gw2");
    let operator = mesh.operator().await;
    wait_live(&operator, &["gw1", "gw2"]).await;
    let cli_cfg = CliConfig {
        nats_url: mesh.url(),
        nats_creds: mesh.operator_creds(),
        fence_timeout: Duration::from_secs(20),
        ..Default::default()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = Vec::new();
    let mut agents_ = Vec::new();
    for i in 0..AGENTS {
        let (to, from) = (format!("t{i}"), format!("s{i}"));
        let rec = Recorder::default();
        let server = agents::serve(&mesh.agent(&to).await, &to, "i1", rec.clone(), true).await;
        let sent = Arc::new(AtomicUsize::new(0));
        let js = jetstream::new(mesh.agent(&from).await);
        // At most WINDOW intents stored and not yet delivered: each kill holds some work,
        // and the test is about the races, not about outrunning a debug build.
        floods.push(agents::flood_within(
            js,
            [&from, &to, "work"],
            stop.clone(),
            sent.clone(),
            Some((rec.clone(), WINDOW)),
        ));
        agents_.push((to, from, rec, sent, server));
    }

    let started = Instant::now();
    eprintln!("set up in {:.1} s", setup_started.elapsed().as_secs_f64());
    let per_agent = cycles.div_ceil(AGENTS);
    let mut runs = Vec::new();
    for (i, (to, _, rec, sent, _)) in agents_.iter().enumerate() {
        let (to, rec, sent, cfg) = (to.clone(), rec.clone(), sent.clone(), cli_cfg.clone());
        let client = operator.clone();
        runs.push(tokio::spawn(async move {
            cycle(&to, i % 2 == 1, client, per_agent, cfg, rec, sent).await
        }));
    }
    let mut failures = Vec::new();
    let mut leaks = Vec::new();
    for run in runs {
        let (f, l) = run.await.expect("cycle task");
        failures.extend(f);
        leaks.extend(l);
    }
    let cycling = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for f in floods {
        f.await.expect("flood");
    }

    assert!(failures.is_empty(), "kill or resume failed: {failures:?}");
    assert!(
        leaks.is_empty(),
        "delivered after a confirmed kill: {leaks:?}"
    );
    // Nothing lost, order kept: every intent of every sender arrives, in order.
    let settling = Instant::now();
    for (to, from, rec, sent, _) in &agents_ {
        let n = sent.load(Ordering::SeqCst);
        rec.wait_unique(from, n).await;
        rec.assert_in_order(from, n);
        eprintln!("{to}: {n} intents from {from}, {} deliveries", rec.len());
    }
    eprintln!(
        "{} kill/resume cycles over {AGENTS} agents with 2 gateways in {:.1} s; all delivered \
         {:.1} s later",
        per_agent * AGENTS,
        cycling.as_secs_f64(),
        settling.elapsed().as_secs_f64()
    );
}

/// `cycles` kills and resumes of `to`, each as `mesh-cli kill` and `resume` run them (or, when
/// `bare`, as the test harness's operator does: one pause or resume, no retry). After
/// each kill, waits until the sender has stored more intents (held), and checks that none
/// arrived; after each resume, waits until something arrives again (the held work replays
/// and the recipient is unparked). Returns the failed commands and the leaks.
async fn cycle(
    to: &str,
    bare: bool,
    operator_client: async_nats::Client,
    cycles: usize,
    cfg: CliConfig,
    rec: Recorder,
    sent: Arc<AtomicUsize>,
) -> (Vec<String>, Vec<String>) {
    let agent = AgentId::new(to).expect("id");
    let mesh = CliMesh::open(cfg.clone()).await.expect("mesh-cli connects");
    let operator = operator_client;
    let mut failures = Vec::new();
    let mut leaks = Vec::new();
    for round in 0..cycles {
        if round % 25 == 0 {
            eprintln!("{to}: round {round}, {} delivered", rec.len());
        }
        for state in [KillState::Killed, KillState::Active] {
            let switch = Switch {
                agent: agent.clone(),
                state,
                reason: format!("churn round {round}"),
                by: "test".into(),
                timeout: cfg.fence_timeout,
            };
            let action = if state == KillState::Killed {
                "kill"
            } else {
                "resume"
            };
            let sent_at_resume = sent.load(Ordering::SeqCst);
            let done = if bare {
                // The bare fence protocol (flag, one pause or resume, confirmations), as the
                // benchmark's fence phase runs it: a hold that fails is a failure here.
                if state == KillState::Killed {
                    operator::kill(&operator, to, &switch.reason).await;
                } else {
                    operator::resume(&operator, to).await;
                }
                Ok(())
            } else {
                match switch.apply(&mesh).await {
                    Ok(outcome) => outcome
                        .verdict(action, cfg.fence_timeout)
                        .map_err(|e| format!("{e:#}")),
                    Err(e) => Err(format!("{e:#}")),
                }
            };
            if let Err(e) = done {
                failures.push(format!("{action} {to} round {round}: {e}"));
                return (failures, leaks);
            }
            if state == KillState::Killed {
                // Held work builds up: a few more intents stored after the kill returned.
                let at_kill = rec.len();
                let target = sent.load(Ordering::SeqCst) + 3;
                wait_until(|| {
                    let n = sent.load(Ordering::SeqCst);
                    n >= target || n >= at_kill + WINDOW
                })
                .await;
                // A delivery in flight ends before the kill returns, so nothing may arrive now.
                let now = rec.len();
                if now != at_kill {
                    leaks.push(format!(
                        "{to} round {round}: {} deliveries after the kill returned",
                        now - at_kill
                    ));
                }
            } else {
                // The held work flows again. The next kill comes as the recipient catches up:
                // when its drain asks the shared lane to unpark it and the lane deletes its
                // consumer, which is the race with the kill's pause.
                let held = sent_at_resume;
                let mut count = rec.count_watch();
                let arrived = tokio::time::timeout(DEADLINE, count.wait_for(|c| *c >= held));
                if arrived.await.is_err() {
                    failures.push(format!(
                        "{to} round {round}: held work not delivered within {DEADLINE:?} of \
                         resume ({} of {held}); {}",
                        rec.len(),
                        consumers(&operator, to).await
                    ));
                    return (failures, leaks);
                }
            }
        }
    }
    (failures, leaks)
}

/// Waits until `done` holds, checking every millisecond (the sender's counter has no event).
async fn wait_until(done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "the flood stopped");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What NATS says about `to`'s parked consumer and the shared one, for a failure message.
async fn consumers(client: &async_nats::Client, to: &str) -> String {
    let js = jetstream::new(client.clone());
    let Ok(stream) = js.get_stream("MESH_INTENTS").await else {
        return "stream unreadable".into();
    };
    let mut out = Vec::new();
    for name in [format!("in_{to}"), "mesh_deliver".to_string()] {
        out.push(match stream.consumer_info(&name).await {
            Ok(i) => format!(
                "{name}: pending {}, unacked {}, waiting {}, paused {}, redelivered {}, \
                 ack floor {}, delivered {}",
                i.num_pending,
                i.num_ack_pending,
                i.num_waiting,
                i.paused,
                i.num_redelivered,
                i.ack_floor.stream_sequence,
                i.delivered.stream_sequence
            ),
            Err(e) => format!("{name}: {e}"),
        });
    }
    out.join("; ")
}
