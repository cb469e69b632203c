//! Agents in two regions (issue 10): region B's server is a leaf node of the hub (region A),
//! where the streams and the gateway live. One agent runs instances in both regions. One kill,
//! made with `mesh-cli` against the hub or by an operator connected to region B's leaf (through
//! the hub's JetStream domain), stops its work to and from both; held work survives a cut of
//! the link between the regions and arrives in order, once, after the resume; a sender in
//! region B gets no acknowledgement while the link is cut and is stored once it retries after
//! the link is back.

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::cli::{finished, mesh_cli_env, shown};
use mesh_tests::gateways::{wait_live, GatewayTask};
use mesh_tests::mesh::HUB_DOMAIN;
use mesh_tests::operator::held;
use mesh_tests::region::two_regions;
use mesh_tests::{eventually, operator, Mesh};

/// Runs `mesh-cli <args>` as the operator against `url`, with the `MESH_*` variables `env`.
async fn cli_run(mesh: &Mesh, url: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let creds = mesh.operator_creds().expect("a secured mesh");
    let mut all = args.to_vec();
    all.extend(["--nats-creds", creds.to_str().expect("utf-8 path")]);
    finished(mesh_cli_env(url, env, &all)).await
}

/// Runs `mesh-cli <args>` as the operator against `url`; it must succeed.
async fn cli(mesh: &Mesh, url: &str, args: &[&str]) {
    cli_json(mesh, url, &[], args).await;
}

/// Runs `mesh-cli --json <args>` as the operator against `url` with `env`; it must succeed.
/// Returns what it printed.
async fn cli_json(
    mesh: &Mesh,
    url: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = cli_run(mesh, url, env, &all).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "mesh-cli {args:?}: {}",
        shown(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("mesh-cli {args:?} printed no JSON ({e}): {}", shown(&out)))
}

/// Serves agent `worker` as `instance` from the server at `url` (a region's).
async fn worker(
    mesh: &Mesh,
    url: &str,
    instance: &str,
    rec: &Recorder,
) -> tokio::task::JoinHandle<()> {
    let client = mesh.agent_at(url, "worker").await;
    agents::serve(&client, "worker", instance, rec.clone(), true).await
}

/// Waits until exactly `n` intents wait for `agent` in its parked consumer (0 once the last
/// deliveries' acks, which follow the agent's replies, have reached the stream).
async fn wait_held(op: &async_nats::Client, agent: &str, n: u64) {
    eventually(&format!("{n} intents held for {agent}"), || {
        let op = op.clone();
        async move { held(&op, agent).await == n }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_kill_stops_the_agents_instances_in_both_regions() {
    let (mesh, region, _gw, op_a) = two_regions().await;
    let b = region.url();

    // The worker serves from region B first, so B's instance is seen taking work.
    let to_worker = Recorder::default();
    let _w_b = worker(&mesh, &b, "w-b", &to_worker).await;
    let (to_sink, _sink) = agents::serve_at(&mesh, &mesh.url(), "sink", "s-a").await;
    let rejected = agents::rejections(&mesh.agent_at(&b, "worker").await, "worker").await;

    // Both floods run in region B: work to the worker, and the worker's own work to the sink.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent_in, sent_out) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let planner = agents::flood(
        jetstream::new(mesh.agent_at(&b, "planner").await),
        "planner",
        "worker",
        "plan",
        stop.clone(),
        sent_in.clone(),
    );
    let outbound = agents::flood(
        jetstream::new(mesh.agent_at(&b, "worker").await),
        "worker",
        "sink",
        "report",
        stop.clone(),
        sent_out.clone(),
    );
    to_worker.wait_for(50).await;
    to_sink.wait_for(50).await;
    assert!(
        to_worker.all().iter().all(|r| r.instance == "w-b"),
        "region B's instance took the work"
    );
    // Now a second instance in region A.
    let _w_a = worker(&mesh, &mesh.url(), "w-a", &to_worker).await;

    // Killed from region A, with mesh-cli on the hub.
    cli(
        &mesh,
        &mesh.url(),
        &["kill", "worker", "--reason", "region test"],
    )
    .await;
    let (in_at_kill, out_at_kill) = (to_worker.len(), to_sink.len());
    let (want_in, want_out) = (
        sent_in.load(Ordering::SeqCst) + 200,
        sent_out.load(Ordering::SeqCst) + 200,
    );
    eventually("200 more intents each way after the kill", || {
        let (i, o) = (sent_in.clone(), sent_out.clone());
        async move { i.load(Ordering::SeqCst) >= want_in && o.load(Ordering::SeqCst) >= want_out }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    planner.await.expect("planner");
    outbound.await.expect("outbound");
    let (total_in, total_out) = (
        sent_in.load(Ordering::SeqCst),
        sent_out.load(Ordering::SeqCst),
    );

    // Outbound: everything after the kill is rejected, and region B hears of it.
    rejected.wait_for(total_out - out_at_kill).await;
    assert_eq!(to_sink.len(), out_at_kill, "nothing left the killed agent");
    assert!(rejected
        .all()
        .iter()
        .all(|(status, reason, _)| *status == 403 && reason.contains("region test")));
    // Inbound: held in the hub, delivered to neither instance.
    wait_held(&op_a, "worker", (total_in - in_at_kill) as u64).await;
    assert_eq!(
        to_worker.len(),
        in_at_kill,
        "nothing reached the killed agent"
    );

    // Resumed from region B, by an operator connected to the leaf. nats-server keeps
    // `$JS.API.>` and `$KV.>` off a leaf link of an account: the operator reaches the hub's
    // streams and buckets through its JetStream domain.
    let op_b = mesh.operator_at(&b).await;
    let mut plain = jetstream::new(op_b.clone());
    plain.set_timeout(Duration::from_secs(2));
    assert!(
        plain.get_stream("MESH_INTENTS").await.is_err(),
        "the JetStream API crossed the leaf link without the hub's domain"
    );
    operator::resume_in(&op_b, HUB_DOMAIN, "worker").await;
    to_worker.wait_unique("planner", total_in).await;
    to_worker.assert_in_order("planner", total_in);

    // Killed again from region B: work sent from either region is held, none delivered; then
    // resumed from region A with mesh-cli.
    operator::kill_in(&op_b, HUB_DOMAIN, "worker", "from region B").await;
    let delivered = to_worker.len();
    let js_a = jetstream::new(mesh.agent("planner").await);
    let js_b = jetstream::new(mesh.agent_at(&b, "planner").await);
    for i in total_in..total_in + 20 {
        let js = if i % 2 == 0 { &js_a } else { &js_b };
        agents::send(js, "planner", "worker", "plan", format!("{i}"))
            .await
            .expect("publish while killed");
    }
    wait_held(&op_a, "worker", 20).await;
    assert_eq!(
        to_worker.len(),
        delivered,
        "nothing reached the killed agent"
    );
    cli(&mesh, &mesh.url(), &["resume", "worker"]).await;
    to_worker.wait_unique("planner", total_in + 20).await;
    to_worker.assert_in_order("planner", total_in + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_work_survives_a_cut_of_the_link_between_regions() {
    let (mesh, region, _gw, op_a) = two_regions().await;
    let b = region.url();
    let to_worker = Recorder::default();
    let _w_b = worker(&mesh, &b, "w-b", &to_worker).await;
    let _w_a = worker(&mesh, &mesh.url(), "w-a", &to_worker).await;

    // Killed from region B; work for it accumulates from senders in both regions.
    let op_b = mesh.operator_at(&b).await;
    operator::kill_in(&op_b, HUB_DOMAIN, "worker", "hold across the cut").await;
    let js_a = jetstream::new(mesh.agent("sender-a").await);
    let mut js_b = jetstream::new(mesh.agent_at(&b, "sender-b").await);
    js_b.set_timeout(Duration::from_millis(500));
    let send_a = |i: usize| {
        let js = js_a.clone();
        async move {
            agents::send(&js, "sender-a", "worker", "job", format!("{i}"))
                .await
                .expect("region A stores its intents");
        }
    };
    let attempts = Arc::new(AtomicUsize::new(0));
    let send_b = {
        let (js_b, attempts) = (js_b.clone(), attempts.clone());
        move |i: usize| {
            let (js, attempts) = (js_b.clone(), attempts.clone());
            async move {
                agents::send_until_stored(
                    &js,
                    ["sender-b", "worker", "job"],
                    &format!("sender-b-{i}"),
                    format!("{i}"),
                    &attempts,
                )
                .await;
            }
        }
    };
    for i in 0..10 {
        send_a(i).await;
        send_b(i).await;
    }

    tokio::task::block_in_place(|| region.leaf.cut_link());
    // Region A goes on storing; region B's intents are not acknowledged while the link is
    // down: the sender has to retry, nothing is lost silently.
    for i in 10..20 {
        send_a(i).await;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "sender-b-10");
    let cut = agents::send_with(&js_b, "mesh.intent.sender-b.worker.job", headers, "10").await;
    assert!(
        cut.is_err(),
        "an intent was acknowledged across a cut link: {cut:?}"
    );
    // B's sender keeps retrying intents 10..20 through the cut: its publishes of intent 10
    // fail until the link is back.
    let before = attempts.load(Ordering::SeqCst);
    let retrying = tokio::spawn({
        let send_b = send_b.clone();
        async move {
            for i in 10..20 {
                send_b(i).await;
            }
        }
    });
    eventually("region B's sender retries intent 10 during the cut", || {
        let n = attempts.load(Ordering::SeqCst);
        async move { n >= before + 3 }
    })
    .await;
    assert!(!retrying.is_finished(), "stored while the link was cut");
    assert_eq!(to_worker.len(), 0, "nothing delivered while killed");
    tokio::task::block_in_place(|| region.leaf.restore_link());
    retrying.await.expect("retrying sender");
    for i in 20..30 {
        send_a(i).await;
        send_b(i).await;
    }
    // All 60 are held once each (a retried intent stored twice would make 61), none delivered.
    wait_held(&op_a, "worker", 60).await;
    assert_eq!(to_worker.len(), 0, "nothing delivered while killed");

    // Resumed from region A: all held work arrives, in order per sender, once.
    cli(&mesh, &mesh.url(), &["resume", "worker"]).await;
    to_worker.wait_unique("sender-a", 30).await;
    to_worker.wait_unique("sender-b", 30).await;
    to_worker.assert_in_order("sender-a", 30);
    to_worker.assert_in_order("sender-b", 30);
    wait_held(&op_a, "worker", 0).await;
}

/// A kill made while the link between the regions is down, of an agent served only from region
/// B: the hub's gateway confirms it alone; once the link is back, nothing reaches the agent
/// until its resume, and then everything sent to it arrives in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_made_while_the_link_is_down_holds_once_it_is_back() {
    let (mesh, region, _gw, op_a) = two_regions().await;
    let to_worker = Recorder::default();
    let _w_b = worker(&mesh, &region.url(), "w-b", &to_worker).await;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = mesh_tests::node_loss::flood(
        mesh.agent("sender-a").await,
        "sender-a",
        "worker",
        Duration::from_millis(10),
        stop.clone(),
    );
    to_worker.wait_unique("sender-a", 30).await;

    tokio::task::block_in_place(|| region.leaf.cut_link());
    // Deliveries to region B fail while the link is down; the work waits at the hub.
    let outcome = cli_json(
        &mesh,
        &mesh.url(),
        &[],
        &["kill", "worker", "--reason", "during the cut"],
    )
    .await;
    assert_confirmed_by(&outcome, &["gw1"]);
    let at_kill = to_worker.len();
    let held_before = held(&op_a, "worker").await;
    tokio::task::block_in_place(|| region.leaf.restore_link());
    // Work sent after the link is back is held too, behind what waited through the cut (an
    // intent whose reply was lost in the cut is held again as well: at least once).
    eventually("30 more intents held after the link is back", || {
        let op = op_a.clone();
        async move { held(&op, "worker").await >= held_before + 30 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let sent = flood.await.expect("flood");
    assert_eq!(
        to_worker.len(),
        at_kill,
        "region B's instance received work after the kill"
    );

    cli(&mesh, &mesh.url(), &["resume", "worker"]).await;
    to_worker.wait_unique("sender-a", sent).await;
    to_worker.assert_in_order("sender-a", sent);
    wait_held(&op_a, "worker", 0).await;
}

/// The fence of a `kill` or `resume` printed with `--json`: every live replica confirmed.
fn assert_confirmed_by(outcome: &serde_json::Value, replicas: &[&str]) {
    assert_eq!(outcome["confirmed"], true, "{outcome}");
    for list in ["live", "confirmed"] {
        let mut got: Vec<&str> = outcome["replicas"][list]
            .as_array()
            .unwrap_or_else(|| panic!("no replicas.{list}: {outcome}"))
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        got.sort_unstable();
        assert_eq!(got, replicas, "replicas.{list}: {outcome}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_cli_in_region_b_works_through_the_hubs_domain() {
    let (mesh, region, _gw1, op_a) = two_regions().await;
    let _gw2 = GatewayTask::start_in(&mesh, "gw2", |_| {}).await;
    wait_live(&op_a, &["gw1", "gw2"]).await;
    let b = region.url();
    let domain = ["--js-domain", HUB_DOMAIN];

    // At the leaf, without the domain, mesh-cli finds no JetStream and says what to give.
    let out = cli_run(&mesh, &b, &[], &["status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--js-domain"),
        "{}",
        shown(&out)
    );

    // The worker serves in both regions; work comes to it from both and goes from it to a sink.
    let to_worker = Recorder::default();
    let _w_b = worker(&mesh, &b, "w-b", &to_worker).await;
    let _w_a = worker(&mesh, &mesh.url(), "w-a", &to_worker).await;
    let (to_sink, _sink) = agents::serve_at(&mesh, &mesh.url(), "sink", "s-a").await;
    let rejected = agents::rejections(&mesh.agent_at(&b, "worker").await, "worker").await;
    let planners = [
        ("planner-a", jetstream::new(mesh.agent("planner-a").await)),
        (
            "planner-b",
            jetstream::new(mesh.agent_at(&b, "planner-b").await),
        ),
    ];
    let workers = [
        jetstream::new(mesh.agent("worker").await),
        jetstream::new(mesh.agent_at(&b, "worker").await),
    ];
    let send_plans = |range: std::ops::Range<usize>| {
        let planners = planners.clone();
        async move {
            for i in range {
                for (from, js) in &planners {
                    agents::send(js, from, "worker", "plan", format!("{i}"))
                        .await
                        .expect("publish a plan");
                }
            }
        }
    };
    send_plans(0..10).await;
    to_worker.wait_unique("planner-a", 10).await;
    to_worker.wait_unique("planner-b", 10).await;
    for js in &workers {
        agents::send(js, "worker", "sink", "report", "before")
            .await
            .expect("publish a report");
    }
    to_sink.wait_for(2).await;

    // Killed with mesh-cli in region B: both gateway replicas at the hub confirm.
    let mut kill = vec!["kill", "worker", "--reason", "from region B"];
    kill.extend(domain);
    let killed = cli_json(&mesh, &b, &[], &kill).await;
    assert_confirmed_by(&killed, &["gw1", "gw2"]);
    assert_eq!(killed["state"], "killed", "{killed}");

    // Enforced for both instances: work from either region is held for the worker, and the
    // worker's own work from either region is rejected.
    let delivered = to_worker.len();
    send_plans(10..30).await;
    wait_held(&op_a, "worker", 40).await;
    for js in &workers {
        agents::send(js, "worker", "sink", "report", "after")
            .await
            .expect("the stream stores a killed agent's intent");
    }
    rejected.wait_for(2).await;
    assert!(
        rejected
            .all()
            .iter()
            .all(|(status, reason, _)| *status == 403 && reason.contains("from region B")),
        "{:?}",
        rejected.all()
    );
    assert_eq!(to_sink.len(), 2, "nothing left the killed agent");
    assert_eq!(
        to_worker.len(),
        delivered,
        "nothing reached the killed agent"
    );

    // `status` from region B sees it killed with the 40 held; the domain here comes from
    // MESH_NATS_JS_DOMAIN, as an operator's environment would give it.
    let env = [("MESH_NATS_JS_DOMAIN", HUB_DOMAIN)];
    let status = cli_json(&mesh, &b, &env, &["status"]).await;
    let worker_status = status["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["agent"] == "worker"))
        .unwrap_or_else(|| panic!("no worker in the status: {status}"));
    assert_eq!(worker_status["state"], "killed", "{worker_status}");
    assert_eq!(worker_status["pending"], 40, "{worker_status}");

    // A policy set and read back from region B.
    let set = cli_json(
        &mesh,
        &b,
        &env,
        &["policy", "set", "worker", "--max-intents-per-day", "123456"],
    )
    .await;
    assert_eq!(set["confirmed"], true, "{set}");
    let got = cli_json(&mesh, &b, &env, &["policy", "get", "worker"]).await;
    assert_eq!(
        got["policy"]["record"]["policy"]["max_intents_per_day"], 123456,
        "{got}"
    );

    // Resumed from region B: the held work arrives at the worker, in order per sender, once.
    let mut resume = vec!["resume", "worker"];
    resume.extend(domain);
    let resumed = cli_json(&mesh, &b, &[], &resume).await;
    assert_confirmed_by(&resumed, &["gw1", "gw2"]);
    to_worker.wait_unique("planner-a", 30).await;
    to_worker.wait_unique("planner-b", 30).await;
    to_worker.assert_in_order("planner-a", 30);
    to_worker.assert_in_order("planner-b", 30);
    wait_held(&op_a, "worker", 0).await;

    // The audit trail, read from region B, has the kill, the policy change and the resume.
    let trail = cli_json(&mesh, &b, &env, &["audit", "--agent", "worker"]).await;
    let kinds: Vec<&str> = trail
        .as_array()
        .unwrap_or_else(|| panic!("no audit entries: {trail}"))
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in ["kill", "policy", "resume"] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
}

/// Whether the server at `url` refuses `creds` at connect.
async fn refused_at(url: &str, creds: &str) -> bool {
    let res = async_nats::ConnectOptions::with_credentials(creds)
        .expect("creds parse")
        .max_reconnects(Some(1))
        .connect(url)
        .await;
    matches!(res, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation)
}

/// Waits until `events` reports that its connection was closed.
async fn disconnected(events: &mut tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>) {
    loop {
        match tokio::time::timeout(mesh_tests::DEADLINE, events.recv()).await {
            Ok(Some(async_nats::Event::Disconnected)) => return,
            Ok(Some(_)) => continue,
            other => panic!("the revoked agent stayed connected: {other:?}"),
        }
    }
}

/// Revocations and region B: `mesh-cli agent revoke` pushes the account update to the server
/// it is connected to, and the system account does not cross the leaf link (it carries the
/// mesh account only), so the leaf's own resolver does not hear of a revocation pushed at the
/// hub: the revoked credentials still work there. Running the same command at the leaf as
/// well (with the hub's domain, for its audit record) cuts them off in region B too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_region_b_only_when_pushed_to_its_leaf_too() {
    let (mesh, region, _gw, _op) = two_regions().await;
    let b = region.url();
    let creds = mesh.agent_creds("worker").expect("creds");
    let (_at_a, mut events_a) = mesh.agent_watched("worker").await;
    let (at_b, mut events_b) = mesh.agent_watched_at(&b, "worker").await;
    let dir = mesh.auth().root().to_str().expect("utf-8 path").to_string();
    let auth = ("MESH_AUTH_DIR", dir.as_str());

    // Revoked at the hub: cut off there, but region B's leaf still takes the credentials.
    let revoked = cli_json(&mesh, &mesh.url(), &[auth], &["agent", "revoke", "worker"]).await;
    assert_eq!(
        revoked["revoked"].as_array().map(Vec::len),
        Some(1),
        "{revoked}"
    );
    disconnected(&mut events_a).await;
    assert!(
        refused_at(&mesh.url(), &creds).await,
        "the hub took revoked credentials"
    );
    mesh_tests::registered(&at_b).await;
    assert!(
        !refused_at(&b, &creds).await,
        "the leaf refused the revoked credentials after a push to the hub alone: the \
         revocation reached it, update docs/OPERATIONS.md"
    );

    // Pushed to the leaf as well: nothing new to revoke, the same account update is sent.
    let again = cli_json(
        &mesh,
        &b,
        &[auth, ("MESH_NATS_JS_DOMAIN", HUB_DOMAIN)],
        &["agent", "revoke", "worker"],
    )
    .await;
    assert_eq!(again["pushed"], true, "{again}");
    disconnected(&mut events_b).await;
    assert!(
        refused_at(&b, &creds).await,
        "the leaf took revoked credentials"
    );
}
