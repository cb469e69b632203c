//! `mesh-cli demo`: the rogue-agent scenario (contract §8, steps 1–6), end to end, on a local
//! mesh it starts itself: one nats-server, two `mesh-gateway` processes, a deployer running as
//! four instances (with heartbeats), a planner that sends it work and an infra agent it floods.
//! Narrates each step with the numbers it measured, checks the mesh's promises, and exits
//! non-zero if one fails. Step 6, the automatic kill by policy, is in [`autokill`]. With
//! `--cluster` the server is a three-node cluster (R3) and node `n1` is SIGKILLed before the
//! kill and restarted before the resume.

mod autokill;
mod undo;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_agent::Agent;
use mesh_schemas::{AgentId, KillState};

use crate::error::CliError;
use crate::events::{self, Filter};
use crate::local::{self, Proc};
use crate::mesh::Mesh;
use crate::output;
use crate::switch::Switch;
use crate::Ctx;

/// Options of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Intents the planner sends the deployer while it is killed.
    #[arg(long, default_value_t = 50)]
    held: u64,
    /// The deployer's `max_intents_per_hour` in step 6.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    cap: u64,
    /// Run on an open nats-server (no credentials); by default every agent, gateway and the
    /// operator connect with credentials of their own.
    #[arg(long)]
    insecure: bool,
    /// Run on a local three-node JetStream cluster (streams and buckets R3) and SIGKILL one
    /// node just before the kill, restarting it before the resume: the kill is still confirmed
    /// and the held work delivered in order.
    #[arg(long)]
    cluster: bool,
}

/// Connects the demo's agents, each with credentials of its own in a secured mesh.
pub(crate) struct Agents {
    url: String,
    auth: Option<mesh_auth::AuthDir>,
}

impl Agents {
    /// A new connection as agent `name`.
    pub(crate) async fn connect(&self, name: &str) -> Result<Agent, CliError> {
        let agent_id = id(name);
        let options = match &self.auth {
            Some(auth) => {
                let creds = auth.add_agent(name, None)?.creds;
                async_nats::ConnectOptions::with_credentials(&creds)
                    .map_err(|e| CliError::nats(format!("read the credentials of {name}"), e))?
            }
            None => async_nats::ConnectOptions::new(),
        };
        let client = options
            .custom_inbox_prefix(mesh_auth::permissions::agent_inbox(name))
            .connect(servers(&self.url)?)
            .await
            .map_err(|e| CliError::nats(format!("connect to {} as {name}", self.url), e))?;
        Ok(Agent::new(client, agent_id))
    }

    /// New credentials of agent `name` (`None` on an open server).
    fn creds(&self, name: &str) -> Result<Option<String>, CliError> {
        match &self.auth {
            Some(auth) => Ok(Some(auth.add_agent(name, None)?.creds)),
            None => Ok(None),
        }
    }
}

/// What the agents saw, shared by their tasks.
#[derive(Default)]
struct Counts {
    /// Deliveries to the deployer, by instance.
    per_instance: Mutex<HashMap<String, u64>>,
    /// Payloads of the planner's intents as the deployer received them (first delivery only).
    from_planner: Mutex<Vec<u64>>,
    seen: Mutex<std::collections::HashSet<String>>,
    to_deployer: AtomicU64,
    infra_from_deployer: AtomicU64,
    /// When infra last received an intent from the deployer, ms since the epoch.
    infra_from_deployer_at_ms: AtomicU64,
    rogue_sent: AtomicU64,
    rejected: AtomicU64,
}

/// The servers of a URL list (one URL, or a cluster's, comma-separated).
pub(crate) fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, CliError> {
    mesh_auth::connect::parse_servers(url).map_err(|e| CliError::nats("read the NATS URL list", e))
}

/// The local nats-server of the demo: one server, or a three-node cluster whose first node is
/// SIGKILLed during the kill and restarted before the resume.
enum Servers {
    One(Proc),
    Cluster {
        binary: std::path::PathBuf,
        nodes: Vec<Node>,
    },
}

/// One node of the demo's cluster, with what it takes to restart it as it was.
struct Node {
    plan: local::ClusterNode,
    conf: Option<std::path::PathBuf>,
    port: Option<u16>,
    proc: Option<Proc>,
}

impl Servers {
    /// Starts the servers in `dir`; returns them with the client URL list.
    async fn start(
        binary: std::path::PathBuf,
        dir: &std::path::Path,
        cluster: bool,
        auth: Option<&local::LocalAuth>,
    ) -> Result<(Servers, String), CliError> {
        if !cluster {
            let conf = auth.map(|a| a.conf.as_path());
            let (proc, url) = local::start_nats(&binary, dir, None, conf).await?;
            return Ok((Servers::One(proc), url));
        }
        let mut nodes = Vec::new();
        let mut urls = Vec::new();
        for plan in local::ClusterNode::plan(dir, 3)? {
            std::fs::create_dir_all(&plan.dir).map_err(|source| local::LocalError::Io {
                what: format!("create {}", plan.dir.display()),
                source,
            })?;
            // Each node resolves accounts from a directory of its own.
            let conf = match auth {
                Some(a) => {
                    let path = plan.dir.join("nats-server.conf");
                    let text = a.auth.server_config(&plan.dir.join("jwt"))?;
                    std::fs::write(&path, text).map_err(|source| local::LocalError::Io {
                        what: format!("write {}", path.display()),
                        source,
                    })?;
                    Some(path)
                }
                None => None,
            };
            let (proc, url) = plan.start(&binary, None, conf.as_deref()).await?;
            let port = url.rsplit(':').next().and_then(|p| p.parse().ok());
            urls.push(url);
            nodes.push(Node {
                plan,
                conf,
                port,
                proc: Some(proc),
            });
        }
        Ok((Servers::Cluster { binary, nodes }, urls.join(",")))
    }

    /// SIGKILLs node `i` of a cluster; returns its name.
    async fn kill_node(&mut self, i: usize) -> Option<String> {
        let Servers::Cluster { nodes, .. } = self else {
            return None;
        };
        let node = nodes.get_mut(i)?;
        if let Some(p) = node.proc.take() {
            p.kill().await;
        }
        Some(node.plan.name.clone())
    }

    /// Restarts node `i` of a cluster on its port, with its store.
    async fn restart_node(&mut self, i: usize) -> Result<(), CliError> {
        let Servers::Cluster { binary, nodes } = self else {
            return Ok(());
        };
        let Some(node) = nodes.get_mut(i) else {
            return Ok(());
        };
        let (proc, _) = node
            .plan
            .start(binary, node.port, node.conf.as_deref())
            .await?;
        node.proc = Some(proc);
        Ok(())
    }

    async fn stop(self) {
        match self {
            Servers::One(p) => stop(p).await,
            Servers::Cluster { nodes, .. } => {
                for p in nodes.into_iter().filter_map(|n| n.proc) {
                    stop(p).await;
                }
            }
        }
    }
}

/// Waits until every stream of the account has a leader and two current replicas, none
/// offline: a restarted node has caught up, as an operator checks before going on.
async fn wait_current(mesh: &Mesh) -> Result<(), CliError> {
    use futures::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut whole = true;
        let names: Vec<_> = mesh.js.stream_names().collect().await;
        for name in names {
            let Ok(name) = name else {
                whole = false;
                break;
            };
            let info = match mesh.js.get_stream(&name).await {
                Ok(mut s) => s.info().await.ok().cloned(),
                Err(_) => None,
            };
            whole &= info.and_then(|i| i.cluster).is_some_and(|c| {
                c.leader.is_some()
                    && c.replicas.len() == 2
                    && c.replicas.iter().all(|p| p.current && !p.offline)
            });
            if !whole {
                break;
            }
        }
        if whole {
            return Ok(());
        }
        check(
            Instant::now() < deadline,
            "the restarted node did not catch up within 30 s",
        )?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rejections of `agent` recorded in the audit trail.
async fn recorded_rejections(mesh: &Mesh, agent: &AgentId) -> Result<u64, CliError> {
    use futures::TryStreamExt;
    let names = &mesh.cfg.names;
    let Some(audit) = mesh.stream(&names.audit_stream).await? else {
        return Ok(0);
    };
    let what = || format!("could not count rejections in {}", names.audit_stream);
    let counts: Vec<(String, usize)> = audit
        .info_with_subjects(mesh.subjects.audit("reject", agent.as_str()))
        .await
        .map_err(|e| CliError::nats(what(), e))?
        .try_collect()
        .await
        .map_err(|e| CliError::nats(what(), e))?;
    Ok(counts.iter().map(|(_, n)| *n as u64).sum())
}

fn id(s: &str) -> AgentId {
    AgentId::new(s).expect("demo ids are valid")
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), CliError> {
    if ok {
        Ok(())
    } else {
        Err(CliError::DemoInvariant(what.into()))
    }
}

/// Runs the scenario.
pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    let started = Instant::now();
    let nats_bin = local::find_nats_server(&ctx.env, &local::search_roots())?;
    let gateway_bin = local::find_gateway()?;
    let temp = tempfile::Builder::new()
        .prefix("mesh-demo-")
        .tempdir()
        .map_err(|source| local::LocalError::Io {
            what: "create a temporary directory".to_string(),
            source,
        })?;
    let dir = temp.path();
    say(ctx, "== Agent Mesh: the rogue-agent demo ==")?;
    let secured = if args.insecure {
        None
    } else {
        Some(local::LocalAuth::prepare(dir, &ctx.cfg.names.prefix)?)
    };
    let (mut servers, url) = Servers::start(nats_bin, dir, args.cluster, secured.as_ref()).await?;
    let auth = secured.map(|s| s.auth);
    let replicas = if args.cluster { 3 } else { 1 };
    // The local server, with its own credentials, none of the configured ones (they are for
    // another server).
    let as_role = |creds: Option<std::path::PathBuf>| {
        ctx.cfg
            .clone()
            .with_connection(mesh_auth::connect::NatsConnection {
                creds,
                ..mesh_auth::connect::NatsConnection::new(&url)
            })
    };
    let cfg = as_role(auth.as_ref().map(mesh_auth::AuthDir::operator_creds));
    let gateway_cfg = as_role(auth.as_ref().map(mesh_auth::AuthDir::gateway_creds));
    let mut gateways = Vec::new();
    for n in 1..=2 {
        let gdir = dir.join(format!("gw{n}"));
        std::fs::create_dir_all(&gdir).map_err(|source| local::LocalError::Io {
            what: format!("create {}", gdir.display()),
            source,
        })?;
        let mut cmd_cfg = gateway_cfg.clone();
        cmd_cfg.names = ctx.cfg.names.clone();
        gateways.push(super::up::start_gateway(
            &gateway_bin,
            &cmd_cfg,
            &gdir,
            replicas,
        )?);
    }
    let mesh = Mesh::open(cfg).await?;
    wait_replicas(&mesh, 2).await?;
    let mode = if auth.is_some() {
        "secured: the gateways, the operator and each agent connect with credentials of their own"
    } else {
        "INSECURE (--insecure): no credentials"
    };
    let shape = if args.cluster {
        "a three-node cluster, streams R3"
    } else {
        "one server"
    };
    say(
        ctx,
        &format!("local NATS at {url} ({shape}; {mode}), 2 gateway replicas live"),
    )?;

    let agents = Agents {
        url: url.clone(),
        auth,
    };
    let result = scenario(&args, ctx, &mesh, &agents, &mut servers).await;
    for g in gateways {
        g.stop(Duration::from_secs(5)).await;
    }
    servers.stop().await;
    match &result {
        Ok(()) => say(
            ctx,
            &format!(
                "demo passed every check in {:.1} s",
                started.elapsed().as_secs_f64()
            ),
        )?,
        Err(_) => output::note("demo FAILED"),
    }
    result
}

async fn stop(p: Proc) {
    p.stop(Duration::from_secs(5)).await;
}

/// Waits until `n` gateway replicas are live. Read errors count as "not yet": on a cluster that
/// has just lost a node, the presence bucket may have no leader for a few seconds.
async fn wait_replicas(mesh: &Mesh, n: usize) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = match mesh.bucket(&mesh.cfg.names.gateways_bucket).await {
            Ok(Some(store)) => crate::fence::live_replicas(&store).await.map(|l| l.len()),
            Ok(None) => Ok(0),
            Err(e) => Err(e),
        };
        match live {
            Ok(live) if live >= n => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            _ => {}
        }
        check(
            Instant::now() < deadline,
            format!("{n} gateway replicas did not come up in 30 s"),
        )?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn say(ctx: &mut Ctx, text: &str) -> Result<(), CliError> {
    ctx.out.line(text)?;
    Ok(())
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        check(
            Instant::now() < deadline,
            format!("timed out waiting: {what}"),
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn scenario(
    args: &Args,
    ctx: &mut Ctx,
    mesh: &Mesh,
    agents: &Agents,
    servers: &mut Servers,
) -> Result<(), CliError> {
    // On a cluster the kill may wait for a new leader of the kill bucket, and the replicas for
    // their streams' leaders: on nats-server 2.11.11, just after the node loss, more than 20 s.
    let fence = if args.cluster {
        Duration::from_secs(45)
    } else {
        Duration::from_secs(5)
    };
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Step 1: the deployer runs as four instances and deploys far more than asked.
    say(
        ctx,
        "\n1. deployer runs as 4 instances; it starts deploying far more services than asked",
    )?;
    let mut tasks = Vec::new();
    let mut heartbeats = Vec::new();
    for i in 0..4 {
        let agent = agents.connect("deployer").await?;
        heartbeats.push(agent.heartbeat(format!("deployer-{i}"), HEARTBEAT_EVERY));
        let mut inbox = agent
            .serve()
            .await
            .map_err(|e| CliError::nats("serve the deployer's inbox", e))?;
        let counts = counts.clone();
        let instance = format!("deployer-{i}");
        tasks.push(tokio::spawn(async move {
            while let Some(d) = inbox.next().await {
                counts.to_deployer.fetch_add(1, Ordering::SeqCst);
                *counts
                    .per_instance
                    .lock()
                    .expect("lock")
                    .entry(instance.clone())
                    .or_default() += 1;
                if d.from.as_str() == "planner"
                    && counts
                        .seen
                        .lock()
                        .expect("lock")
                        .insert(d.intent_id.clone())
                {
                    if let Ok(n) = String::from_utf8_lossy(&d.payload).parse::<u64>() {
                        counts.from_planner.lock().expect("lock").push(n);
                    }
                }
                let _ = d.ack().await;
            }
        }));
    }
    let infra = agents.connect("infra").await?;
    heartbeats.push(infra.heartbeat("infra-0", HEARTBEAT_EVERY));
    let mut infra_inbox = infra
        .serve()
        .await
        .map_err(|e| CliError::nats("serve infra", e))?;
    {
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(d) = infra_inbox.next().await {
                if d.from.as_str() == "deployer" {
                    counts.infra_from_deployer.fetch_add(1, Ordering::SeqCst);
                    counts
                        .infra_from_deployer_at_ms
                        .store(mesh_schemas::now_unix_ms(), Ordering::SeqCst);
                }
                let _ = d.ack().await;
            }
        }));
    }
    let rogue = agents.connect("deployer").await?;
    {
        let mut rejections = rogue
            .rejections()
            .await
            .map_err(|e| CliError::nats("follow the deployer's rejections", e))?;
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            use futures::StreamExt;
            while rejections.next().await.is_some() {
                counts.rejected.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    {
        let counts = counts.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let infra = id("infra");
            while !stop.load(Ordering::SeqCst) {
                let n = counts.rogue_sent.load(Ordering::SeqCst);
                if rogue
                    .send(&infra, "deploy.service", format!("svc-{n}"))
                    .await
                    .is_ok()
                {
                    counts.rogue_sent.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let planner = agents.connect("planner").await?;
    heartbeats.push(planner.heartbeat("planner-0", HEARTBEAT_EVERY));
    let deployer = id("deployer");
    let mut planned = 0u64;
    for _ in 0..20 {
        send_plan(&planner, &deployer, planned).await?;
        planned += 1;
    }
    let c = counts.clone();
    wait_until("the deployer gets the planner's first 20 intents", || {
        c.from_planner.lock().expect("lock").len() >= 20
    })
    .await?;
    let c = counts.clone();
    wait_until("the rogue deploys reach infra", || {
        c.infra_from_deployer.load(Ordering::SeqCst) >= 200
    })
    .await?;
    say(ctx, &format!(
        "   deployer asked for 3 deploys, has sent {} deploy.service intents to infra ({} delivered)",
        counts.rogue_sent.load(Ordering::SeqCst),
        counts.infra_from_deployer.load(Ordering::SeqCst)
    ))?;

    // Step 2: one kill stops every instance, confirmed by every replica.
    if let Some(name) = servers.kill_node(0).await {
        say(
            ctx,
            &format!("\n   node {name} of the cluster crashes (SIGKILL) while intents flow"),
        )?;
        // The replicas' presence may lapse while the cluster elects new leaders; a kill then
        // would not wait for them. The demo shows a kill confirmed by both, so it waits.
        let t = Instant::now();
        wait_replicas(mesh, 2).await?;
        say(
            ctx,
            &format!(
                "   both gateway replicas live again on the two other nodes after {:.1} s",
                t.elapsed().as_secs_f64()
            ),
        )?;
    }
    say(
        ctx,
        "\n2. operator: mesh-cli kill deployer --reason \"deployed 47 of 3\"",
    )?;
    let outcome = Switch {
        agent: deployer.clone(),
        state: KillState::Killed,
        reason: "deployed 47 of 3".into(),
        by: "demo-operator".into(),
        timeout: fence,
    }
    .apply(mesh)
    .await?;
    check(outcome.confirmed, "every live replica confirmed the kill")?;
    check(
        outcome.replicas.confirmed.len() >= 2,
        "both gateway replicas confirmed the kill",
    )?;
    let in_at_kill = counts.to_deployer.load(Ordering::SeqCst);
    let out_at_kill = counts.infra_from_deployer.load(Ordering::SeqCst);
    say(ctx, &format!("   {}", outcome.summary()))?;

    // Step 2b: the rogue tries to undo its own kill with its own credentials.
    if let Some(creds) = agents.creds("deployer")? {
        say(
            ctx,
            "   the deployer tries to undo its kill with the credentials it holds:",
        )?;
        for line in undo::attempt(mesh, &deployer, &creds).await? {
            say(ctx, &format!("   - {line}"))?;
        }
        say(ctx, "   the kill holds")?;
    }

    // Step 3: work for the deployer keeps arriving and waits, durable; its own sends bounce.
    say(ctx, &format!("\n3. the planner sends {} more intents to the killed deployer; the deployer keeps trying to deploy", args.held))?;
    for _ in 0..args.held {
        send_plan(&planner, &deployer, planned).await?;
        planned += 1;
    }
    let c = counts.clone();
    let target = counts.rogue_sent.load(Ordering::SeqCst) + 200;
    wait_until("the rogue sends 200 more", || {
        c.rogue_sent.load(Ordering::SeqCst) >= target
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    // Counted from the audit trail: the notices are best effort (core NATS), and an instance
    // that reconnects after a node's loss misses those sent meanwhile. On a cluster just after
    // the node loss, nats-server 2.11.11 took more than 30 s to store them all.
    let deadline = Instant::now() + fence.max(Duration::from_secs(30)) * 2;
    let recorded = loop {
        let recorded = recorded_rejections(mesh, &deployer).await?;
        if counts.infra_from_deployer.load(Ordering::SeqCst) + recorded
            >= counts.rogue_sent.load(Ordering::SeqCst)
        {
            break recorded;
        }
        check(
            Instant::now() < deadline,
            "timed out waiting: every rogue intent after the kill is rejected with a record",
        )?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rejected = counts.rejected.load(Ordering::SeqCst);
    check(
        counts.to_deployer.load(Ordering::SeqCst) == in_at_kill,
        "nothing reached the killed deployer",
    )?;
    check(
        counts.infra_from_deployer.load(Ordering::SeqCst) == out_at_kill,
        "nothing left the killed deployer",
    )?;
    say(ctx, &format!(
        "   delivered to the deployer since the kill: 0; delivered from it: 0; its intents rejected (403, with a record): {recorded}, notices received: {rejected}"
    ))?;

    // Step 4: status and audit show what happened and what is pending.
    say(
        ctx,
        "\n4. mesh-cli status / mesh-cli audit --agent deployer",
    )?;
    // Reads of the buckets can still time out while a cluster recovers from the node loss.
    let status = crate::retry::until_while(
        tokio::time::Instant::now() + fence,
        "read the status",
        crate::retry::transient,
        || super::status::read(mesh),
    )
    .await
    .map_err(|gave_up| gave_up.last)?;
    let row = status.agents.iter().find(|a| a.agent == "deployer");
    let Some(pending) = row.and_then(|r| r.pending) else {
        return Err(CliError::DemoInvariant(format!(
            "mesh-cli status could not count the {} intents held for the deployer (see the warning above)",
            args.held
        )));
    };
    check(
        pending == args.held,
        format!(
            "{} intents held for the deployer, status says {pending}",
            args.held
        ),
    )?;
    for a in &status.agents {
        say(ctx, &format!("   {}", status_line(a)))?;
    }
    let filter = Filter {
        agent: Some(deployer.clone()),
        kind: Some("kill".into()),
    };
    let kills = events::history(mesh, &filter, None, 10).await?;
    check(!kills.is_empty(), "the kill is in the audit trail")?;
    for e in &kills {
        say(
            ctx,
            &format!(
                "   audit: {} {} by {}: {} ({})",
                e.event.kind.as_str(),
                e.event.agent,
                e.event.actor,
                e.event.reason,
                e.details()
            ),
        )?;
    }

    // Step 5: resume; the waiting intents are delivered, in order, none lost.
    if args.cluster {
        servers.restart_node(0).await?;
        let t = Instant::now();
        wait_current(mesh).await?;
        say(
            ctx,
            &format!(
                "\n   node n1 restarted; every stream has three current copies again after {:.1} s",
                t.elapsed().as_secs_f64()
            ),
        )?;
    }
    say(ctx, "\n5. after the fix: mesh-cli resume deployer")?;
    let t = Instant::now();
    let outcome = Switch {
        agent: deployer.clone(),
        state: KillState::Active,
        reason: "fixed the deploy loop".into(),
        by: "demo-operator".into(),
        timeout: fence,
    }
    .apply(mesh)
    .await?;
    check(outcome.confirmed, "every live replica confirmed the resume")?;
    let c = counts.clone();
    let want = planned as usize;
    wait_until("the held intents are delivered", || {
        c.from_planner.lock().expect("lock").len() >= want
    })
    .await?;
    let got = counts.from_planner.lock().expect("lock").clone();
    let in_order: Vec<u64> = (0..planned).collect();
    check(
        got == in_order,
        "the planner's intents arrived in order, none missing",
    )?;
    let per_instance = counts.per_instance.lock().expect("lock").clone();
    say(
        ctx,
        &format!(
            "   {} held intents delivered in order in {:.0} ms; deliveries per instance: {:?}",
            args.held,
            t.elapsed().as_secs_f64() * 1000.0,
            per_instance
        ),
    )?;

    // Step 6: a policy kills the deployer on its own when it misbehaves again.
    let step6 = autokill::run(args, ctx, mesh, agents, &counts).await;
    for t in tasks {
        t.abort();
    }
    for h in heartbeats {
        h.stop().await;
    }
    step6
}

/// How often the demo's agent instances send heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// One agent's line of `mesh-cli status`, for the narration.
fn status_line(a: &super::status::AgentStatus) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    format!(
        "{:<9} {:<7} health {:<8} instances {:<2} pending {:<4} rejected {:<4} intents this hour {:<4} {}",
        a.agent,
        a.state,
        a.health,
        opt(a.instances.map(|n| n.to_string())),
        opt(a.pending.map(|p| p.to_string())),
        a.rejected,
        opt(a.intents_this_hour.map(|n| n.to_string())),
        a.reason
    )
}

async fn send_plan(planner: &Agent, deployer: &AgentId, n: u64) -> Result<(), CliError> {
    planner
        .send(deployer, "deploy.request", n.to_string())
        .await
        .map(|_| ())
        .map_err(|e| CliError::nats("send a planner intent", e))
}
