//! One module per figure of issue 4. Each phase starts its own nats-server and agents (a
//! [`Stage`]), so that no phase inherits another's consumers, backlog or stored intents, and
//! records its figures in the [`Report`](crate::Report); a failing phase records an error and
//! leaves its figures `null`.
//!
//! - [`throughput`]: max throughput and added latency at half load, baseline vs gateway.
//! - [`fence`]: kill → every replica confirmed, 1 and 3 replicas, under load.
//! - [`replay`]: delivery rate of held intents released by a resume.
//! - [`policy`]: throughput with policies on every agent against none (once the gateway has them).
//! - [`scale`]: throughput, RSS and start time with 10, 1,000 and 10,000 agents.
//! - [`secured`]: throughput and added latency of the mesh on a secured server against an open
//!   one, in the same shape; [`mint`]: the cost of issuing agents' credentials.
//! - [`cluster`]: throughput against the baseline and the kill fence on a three-node JetStream
//!   cluster with R3 streams and buckets.

pub mod cluster;
pub mod fence;
pub mod mint;
pub mod policy;
pub mod replay;
pub mod scale;
pub mod secured;
pub mod throughput;

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use mesh_gateway::{GatewayConfig, MeshObjects};
use mesh_testkit::{Cluster, NatsServer};

use crate::access::Access;
use crate::agents::Agents;
use crate::child::{self, ChildProc};
use crate::load::Publisher;
use crate::traffic::Route;
use crate::{relay, Env, Params};

/// How long a child may take to drain and exit.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// How long a gateway replica may take to announce itself.
pub const START_WITHIN: Duration = Duration::from_secs(30);

/// The phase's own nats-server, or cluster of them.
pub enum Servers {
    One(Box<NatsServer>),
    Cluster(Cluster),
}

impl Servers {
    /// Every node, the first one first.
    pub fn nodes(&self) -> &[NatsServer] {
        match self {
            Servers::One(server) => std::slice::from_ref(server),
            Servers::Cluster(cluster) => cluster.nodes(),
        }
    }
}

impl From<NatsServer> for Servers {
    fn from(server: NatsServer) -> Servers {
        Servers::One(Box::new(server))
    }
}

impl From<Cluster> for Servers {
    fn from(cluster: Cluster) -> Servers {
        Servers::Cluster(cluster)
    }
}

/// A nats-server (or cluster) of the phase's own, its agents, and an operator connection.
pub struct Stage {
    /// Where the harness's clients (agents, senders, operator) connect: the first node.
    pub url: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub agents: Agents,
    /// With `--perf`: where windows record their profiles, and a counter to name them.
    perf: Option<(std::path::PathBuf, std::sync::atomic::AtomicUsize)>,
    /// Replicas of the mesh's streams and buckets and of the baseline stream: 1 on a single
    /// server, 3 on a cluster, as a gateway would be configured.
    pub replicas: usize,
    /// Declared after everything that talks to it: the server goes after them.
    pub server: Servers,
    /// How clients connect: open, or each with its own credentials. Declared after the server:
    /// the resolver's store in its directory goes after the server.
    pub access: Access,
}

impl Stage {
    /// Starts an open server and `agents` agents, sharing `params.agent_connections`.
    pub async fn start(params: &Params, env: &Env, agents: usize) -> anyhow::Result<Stage> {
        let access = Access::open();
        let (server, client) = serve(&access).await?;
        let url = server.url();
        let agents = Agents::start(&url, agents, params.agent_connections).await?;
        Ok(Self::assemble(env, server.into(), client, agents, access))
    }

    /// Starts an open JetStream cluster of `nodes` nodes and `agents` agents on its first node,
    /// sharing `params.agent_connections`. Streams and buckets get `nodes.min(3)` replicas.
    pub async fn start_cluster(
        params: &Params,
        env: &Env,
        nodes: usize,
        agents: usize,
    ) -> anyhow::Result<Stage> {
        let cluster = tokio::task::spawn_blocking(move || Cluster::try_start(nodes))
            .await
            .context("cluster start task")?
            .with_context(|| format!("cannot start a {nodes}-node nats-server cluster"))?;
        let url = cluster.node(0).url();
        let client = async_nats::connect(&url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let agents = Agents::start(&url, agents, params.agent_connections).await?;
        let mut stage = Self::assemble(env, cluster.into(), client, agents, Access::open());
        stage.replicas = nodes.min(3);
        Ok(stage)
    }

    /// Starts a server configured for `access` (open or secured) and `agents` agents, each on
    /// a connection of its own with its own inbox prefix and, when secured, its credentials:
    /// the shape of a real mesh, the same on both sides of the secured phase.
    pub async fn start_each(env: &Env, agents: usize, access: Access) -> anyhow::Result<Stage> {
        let (server, client) = serve(&access).await?;
        let agents = Agents::start_each(&server.url(), agents, &access).await?;
        Ok(Self::assemble(env, server.into(), client, agents, access))
    }

    fn assemble(
        env: &Env,
        server: Servers,
        client: async_nats::Client,
        agents: Agents,
        access: Access,
    ) -> Stage {
        Stage {
            url: server.nodes()[0].url(),
            js: jetstream::new(client.clone()),
            client,
            agents,
            perf: env
                .perf_dir
                .clone()
                .map(|d| (d, std::sync::atomic::AtomicUsize::new(0))),
            replicas: 1,
            server,
            access,
        }
    }

    /// A publisher with a connection per sender, made with this stage's [`Access`], on the
    /// mesh route.
    pub async fn senders(&self, params: &Params, seed: u64) -> anyhow::Result<Publisher> {
        Publisher::connect_each(&self.url, &self.access, params, self.agents.len(), seed).await
    }

    /// `MESH_*` variables of this stage's gateway replicas: `MESH_NATS_*` for its access, and
    /// `MESH_REPLICAS` on a cluster, as a clustered gateway is configured.
    pub fn gateway_env(&self) -> Vec<(String, std::ffi::OsString)> {
        let mut vars = self.access.gateway_env(&self.url);
        if self.replicas > 1 {
            vars.push(("MESH_REPLICAS".into(), self.replicas.to_string().into()));
        }
        vars
    }

    /// The URL of node `i % nodes`: where deliverer `i` connects, so that a cluster's replicas
    /// spread over its nodes (the first deliverer shares the harness's node).
    pub fn node_url(&self, i: usize) -> String {
        let nodes = self.server.nodes();
        nodes[i % nodes.len()].url()
    }

    /// A publisher on `route` for this stage's agents.
    pub async fn publisher(
        &self,
        params: &Params,
        route: Route,
        seed: u64,
    ) -> anyhow::Result<Publisher> {
        Publisher::connect(&self.url, route, params, self.agents.len(), seed).await
    }

    /// Creates the baseline's stream, with the stage's replicas (its consumer inherits them).
    pub async fn direct_stream(&self) -> anyhow::Result<()> {
        self.js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                num_replicas: self.replicas,
                ..relay::stream_config()
            })
            .await
            .context("cannot create the baseline stream")?;
        Ok(())
    }

    /// Starts a baseline relay of `shape` on an empty baseline stream: a relay's durable
    /// consumer would otherwise first deliver what other relays already delivered.
    pub async fn relay(&self, env: &Env, shape: crate::relay::Shape) -> anyhow::Result<ChildProc> {
        let stream = self
            .js
            .get_stream(crate::traffic::DIRECT_STREAM)
            .await
            .context("cannot get the baseline stream")?;
        stream
            .purge()
            .await
            .context("cannot purge the baseline stream")?;
        ChildProc::relay_shaped(env, &self.node_url(0), shape).await
    }

    /// Creates the mesh's streams and buckets the way a gateway does, with default names.
    pub async fn mesh_objects(&self) -> anyhow::Result<MeshObjects> {
        let cfg = GatewayConfig {
            nats_url: self.url.clone(),
            replicas: self.replicas,
            ..GatewayConfig::default()
        };
        mesh_gateway::setup::ensure(&self.js, &cfg)
            .await
            .context("cannot create the mesh's streams and buckets")
    }

    /// mesh-cli's configuration for this stage (its URL, its replicas).
    pub fn cli_config(&self) -> mesh_cli::CliConfig {
        mesh_cli::CliConfig {
            nats_url: self.url.clone(),
            replicas: self.replicas,
            ..mesh_cli::CliConfig::default()
        }
    }

    /// A mesh-cli session on this server, for kills and resumes.
    pub async fn operator(&self) -> anyhow::Result<mesh_cli::mesh::Mesh> {
        mesh_cli::mesh::Mesh::open(self.cli_config())
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("cannot open a mesh-cli session")
    }

    /// The processes whose CPU time a window accounts for: nats-server (every node, all named
    /// `nats`), this process, and the deliverer (`gateway` or `relay`) when given.
    pub fn watch(&self, deliverer: Option<(&str, &ChildProc)>) -> Vec<(String, u32)> {
        let mut w = vec![("bench".to_string(), std::process::id())];
        for node in self.server.nodes() {
            if let Some(pid) = node.pid() {
                w.push(("nats".to_string(), pid));
            }
        }
        if let Some((name, child)) = deliverer {
            if let Some(pid) = child.pid() {
                w.push((name.to_string(), pid));
            }
        }
        w
    }

    /// A measurement window on this stage's agents.
    pub fn spec<'a>(
        &'a self,
        params: &Params,
        pace: crate::load::Pace<'a>,
        measure: Duration,
        deliverer: Option<(&str, &ChildProc)>,
    ) -> crate::measure::Spec<'a> {
        let perf = self.perf.as_ref().map(|(dir, n)| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let who = deliverer.map(|(name, _)| name).unwrap_or("none");
            let label = format!("{}a-w{n}-{who}", self.agents.len());
            (dir.clone(), label)
        });
        crate::measure::Spec {
            pace,
            warmup: params.warmup,
            measure,
            timing: false,
            drain: drain_within(params.backlog),
            watch: self.watch(deliverer),
            monitor: self
                .server
                .nodes()
                .iter()
                .filter_map(|n| n.monitor_url().strip_prefix("http://").map(str::to_string))
                .collect(),
            perf,
        }
    }

    /// Closed-loop publishing: as fast as the deliverer keeps up, bounded backlog.
    pub fn closed(&self, params: &Params) -> crate::load::Pace<'_> {
        crate::load::Pace::Closed {
            agents: &self.agents,
            backlog: params.backlog,
        }
    }

    /// nats-server's own memory (the first node's).
    pub fn server_memory(&self) -> Option<child::Memory> {
        child::memory(self.server.nodes()[0].pid()?)
    }

    /// Starts gateway replicas `ids` (replica `i` on node `i % nodes`) and waits until all of
    /// them are live.
    pub async fn gateways(
        &self,
        env: &Env,
        objects: &MeshObjects,
        ids: &[String],
    ) -> anyhow::Result<Vec<ChildProc>> {
        let mut gws = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            gws.push(ChildProc::gateway(
                env,
                &self.node_url(i),
                id,
                &self.gateway_env(),
            )?);
        }
        child::wait_live(&objects.gateways, ids, &mut gws, START_WITHIN).await?;
        Ok(gws)
    }
}

impl Stage {
    /// Stops gateway replicas, then releases the pin of every recipient consumer they held.
    ///
    /// A gateway that stops does not release its pins, so a gateway started after it would
    /// deliver nothing for `pin_timeout` (20 s); that is measured on its own (`restart_s_*`).
    /// Between two measurements of a phase, the harness releases the pins itself.
    pub async fn stop_gateways(
        &self,
        report: &mut crate::Report,
        objects: &MeshObjects,
        gws: Vec<ChildProc>,
    ) -> anyhow::Result<()> {
        stop_all(report, gws).await?;
        let mut names = objects.intents.consumer_names();
        let mut consumers = Vec::new();
        while let Some(Ok(name)) = names.next().await {
            consumers.push(name);
        }
        for name in consumers.iter().filter(|n| n.starts_with("in_")) {
            // A consumer nobody pulled has no pin; that answer is an error and is fine.
            let _ = objects
                .intents
                .unpin_consumer(name, mesh_schemas::MeshNames::PRIORITY_GROUP)
                .await;
        }
        Ok(())
    }
}

/// Starts a nats-server configured for `access` and connects the operator to it.
async fn serve(access: &Access) -> anyhow::Result<(NatsServer, async_nats::Client)> {
    let server = match access.server_conf()? {
        None => tokio::task::spawn_blocking(NatsServer::try_start).await,
        Some(conf) => {
            tokio::task::spawn_blocking(move || NatsServer::try_start_with_conf(&conf)).await
        }
    }
    .context("server start task")?
    .with_context(|| format!("cannot start the {} nats-server", access.name()))?;
    let url = server.url();
    let client = access
        .operator(&url)?
        .connect(&url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok((server, client))
}

/// Stops every child; the first failure (an exit with an error) is returned after all were
/// stopped. A child that had to be killed after [`STOP_GRACE`] is a note, not a failure.
pub async fn stop_all(report: &mut crate::Report, children: Vec<ChildProc>) -> anyhow::Result<()> {
    let mut first = Ok(());
    for c in children {
        let name = c.name.clone();
        let log = c.log.clone();
        match c.stop(STOP_GRACE).await {
            Ok(true) => {}
            Ok(false) => report.note(format!(
                "{name} did not exit within {STOP_GRACE:?} of its stop signal and was killed; see {}",
                log.display()
            )),
            Err(e) => {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
    }
    first
}

/// Stops one child (a relay), like [`stop_all`].
pub async fn stop_one(report: &mut crate::Report, child: ChildProc) -> anyhow::Result<()> {
    stop_all(report, vec![child]).await
}

/// How long to wait for a backlog of `n` intents to be received, generously.
pub fn drain_within(n: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(n / 2)
}

/// Records the CPU cost of a window: `cpu_us_per_intent_<process><suffix>` and
/// `cpu_cores_<process><suffix>` for every watched process.
pub fn record_cpu(report: &mut crate::Report, suffix: &str, w: &crate::measure::Window) {
    for (name, _) in &w.cpu {
        report.set(
            format!("cpu_us_per_intent_{name}{suffix}"),
            w.cpu_us_per_intent(name),
        );
        report.set(format!("cpu_cores_{name}{suffix}"), w.cpu_cores(name));
    }
    report.set(
        format!("nats_msgs_per_intent{suffix}"),
        w.nats_msgs_per_intent(),
    );
}

/// Records a note when a run lost intents or publishes.
pub fn check(report: &mut crate::Report, what: &str, w: &crate::measure::Window) {
    if w.undelivered > 0 || w.sent.failed > 0 {
        report.note(format!(
            "{what}: {} stored intents not received within the drain deadline, {} publishes failed",
            w.undelivered, w.sent.failed
        ));
    }
}
