//! The mesh on a three-node JetStream cluster (issue 10): throughput against the baseline and
//! the kill fence, with the mesh's streams and buckets R3 (gateway replicas configured with
//! `replicas = 3`, as mesh-cli and the gateway set them up for a cluster) and the baseline's
//! stream R3 too, so that both sides pay for replication.
//!
//! The shapes are the single server's: agents, senders and the operator on the first node;
//! throughput is closed-loop through the baseline relay, then through one gateway replica (both
//! on the first node), alternated, medians; the fence is measured with three replicas, one per
//! node, at half the gateway's measured maximum.
//!
//! Which node leads a stream or a consumer decides how many route hops each message takes, and
//! the cluster picks leaders at random: left alone, the two sides of the ratio would run on
//! different layouts. So before measuring, the phase moves the leader of every stream and of
//! both delivering consumers (`mesh_deliver`, the relay's) to the first node, where the clients
//! are (a leader step-down with a preferred server), and notes where the leaders were after
//! the throughput rounds.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use mesh_gateway::GatewayConfig;
use mesh_schemas::MeshNames;

use crate::phases::fence::{self, Fence};
use crate::phases::throughput;
use crate::phases::Stage;
use crate::report::Report;
use crate::traffic::{self, Route};
use crate::{progress, Env, Params};

/// Nodes of the cluster.
pub const NODES: usize = 3;

/// The node every leader is moved to: the harness's clients are on it.
const LEADER_NODE: &str = "n1";

/// How long a leader may take to move.
const PLACE_WITHIN: Duration = Duration::from_secs(15);

/// The prefix of every key of this phase.
const PREFIX: &str = "cluster_";

pub async fn run(params: &Params, env: &Env, report: &mut Report) {
    if let Err(e) = measure_all(params, env, report).await {
        report.error("cluster", &e);
    }
}

async fn measure_all(params: &Params, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    progress(format!(
        "cluster: {NODES}-node JetStream cluster, R3 streams and buckets, {} agents",
        params.agents
    ));
    let stage = Stage::start_cluster(params, env, NODES, params.agents).await?;
    stage.direct_stream().await?;
    let objects = stage.mesh_objects().await?;
    // The delivering consumers exist before anything pulls, so that their leaders can be placed.
    let cfg = GatewayConfig {
        replicas: stage.replicas,
        ..GatewayConfig::default()
    };
    mesh_gateway::setup::ensure_delivery_consumer(&objects.intents, &cfg)
        .await
        .context("cannot create the mesh's delivery consumer")?;
    stage
        .js
        .get_stream(traffic::DIRECT_STREAM)
        .await
        .context("cannot get the baseline stream")?
        .get_or_create_consumer(traffic::DIRECT_CONSUMER, crate::relay::consumer_config())
        .await
        .context("cannot create the baseline relay's consumer")?;
    if let Err(e) = place_leaders(&stage, &cfg.names, LEADER_NODE).await {
        // Not a broken mesh: the two sides may run on different layouts; the note says so.
        report.note(format!(
            "cluster: the leaders could not all be moved to {LEADER_NODE}, so the sides may \
             differ in route hops: {e:#}"
        ));
    }
    let mut direct = stage.publisher(params, Route::Direct, 31).await?;
    let mut mesh = stage.publisher(params, Route::Mesh, 32).await?;
    let rounds = throughput::alternate(
        params,
        env,
        &stage,
        &objects,
        (&mut direct, &mut mesh),
        report,
        "_cluster",
    )
    .await?;
    report.set("cluster_throughput_intents_per_s", rounds.gateway);
    report.set("cluster_baseline_throughput_per_s", rounds.baseline);
    report.set("cluster_throughput_ratio", rounds.ratio());
    report.set(
        "cluster_gateway_rss_mb_throughput",
        rounds.rss.map(|m| m.rss_mb),
    );
    match leaders(&stage).await {
        Ok(leaders) => report.note(format!(
            "cluster: leaders after the throughput rounds: {leaders}; agents, senders, relay \
             and the throughput gateway on n1, fence replicas on n1, n2, n3"
        )),
        Err(e) => report.note(format!("cluster: cannot read the leaders: {e:#}")),
    }

    // The fence at half the gateway's maximum on this cluster.
    let Some(max) = rounds.gateway.filter(|g| *g > 0.0) else {
        anyhow::bail!("no gateway throughput on the cluster, so no rate for the fence");
    };
    let ids: Vec<String> = (0..NODES).map(|i| format!("gw-c{NODES}-{i}")).collect();
    let keys = |name: &str| format!("{PREFIX}{name}");
    let what = format!("cluster kill fence ({NODES} replicas)");
    let fence = Fence {
        stage: &stage,
        objects: &objects,
        ids: &ids,
        rate: max / 2.0,
        what: &what,
        keys: &keys,
    };
    fence::under_load(params, env, report, fence).await
}

/// The streams and consumers whose leaders matter: every stream, with the consumer each side
/// delivers from.
fn delivering(names: &MeshNames) -> [(String, String); 2] {
    [
        (names.intents_stream.clone(), names.delivery_consumer()),
        (
            traffic::DIRECT_STREAM.to_string(),
            traffic::DIRECT_CONSUMER.to_string(),
        ),
    ]
}

/// Every stream of the stage's account (the mesh's buckets are streams too).
async fn streams(stage: &Stage) -> anyhow::Result<Vec<String>> {
    let mut names = stage.js.stream_names();
    let mut all = Vec::new();
    while let Some(name) = names.next().await {
        all.push(name.context("cannot list the streams")?);
    }
    all.sort();
    Ok(all)
}

/// The leader of `stream`, or of its `consumer`.
async fn leader_of(stage: &Stage, stream: &str, consumer: Option<&str>) -> Option<String> {
    let mut s = stage.js.get_stream(stream).await.ok()?;
    let cluster = match consumer {
        None => s.info().await.ok()?.cluster.clone(),
        Some(c) => s.consumer_info(c).await.ok()?.cluster,
    };
    cluster?.leader
}

/// Moves the leader of every stream, and of both delivering consumers, to `node`.
async fn place_leaders(stage: &Stage, names: &MeshNames, node: &str) -> anyhow::Result<()> {
    let mut targets: Vec<(String, Option<String>)> = streams(stage)
        .await?
        .into_iter()
        .map(|s| (s, None))
        .collect();
    targets.extend(delivering(names).map(|(s, c)| (s, Some(c))));
    let preferred = serde_json::json!({ "placement": { "preferred": node } }).to_string();
    for (stream, consumer) in &targets {
        let subject = match consumer {
            None => format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
            Some(c) => format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{c}"),
        };
        let what = match consumer {
            None => stream.clone(),
            Some(c) => format!("{stream} > {c}"),
        };
        let deadline = tokio::time::Instant::now() + PLACE_WITHIN;
        loop {
            let leader = leader_of(stage, stream, consumer.as_deref()).await;
            if leader.as_deref() == Some(node) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the leader of {what} is {leader:?}, not {node}, {PLACE_WITHIN:?} after asking it to move");
            }
            // A step-down while an election runs is refused; asking again is harmless.
            if leader.is_some() {
                let _ = stage
                    .client
                    .request(subject.clone(), preferred.clone().into())
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// "MESH_INTENTS n1 (consumer mesh_deliver n1), …": the leader of every stream, and of the
/// consumer each side delivers from.
async fn leaders(stage: &Stage) -> anyhow::Result<String> {
    let names = MeshNames::default();
    let consumers = delivering(&names);
    let mut parts = Vec::new();
    for stream in streams(stage).await? {
        let leader = leader_of(stage, &stream, None).await;
        let mut part = format!("{stream} {}", leader.as_deref().unwrap_or("-"));
        if let Some((_, c)) = consumers.iter().find(|(s, _)| *s == stream) {
            let leader = leader_of(stage, &stream, Some(c)).await;
            part.push_str(&format!(
                " (consumer {c} {})",
                leader.as_deref().unwrap_or("-")
            ));
        }
        parts.push(part);
    }
    Ok(parts.join(", "))
}
