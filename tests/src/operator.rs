//! Operator actions with the fence protocol `mesh-cli` uses: write the flag, hold the consumer,
//! wait for every live replica's confirmation. Also reads of the audit trail.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use mesh_gateway::GatewayConfig;
use mesh_schemas::{decode, encode, AgentId, AuditEvent, FenceAck, KillRecord, KillState};

/// What a fenced kill or resume reported.
#[derive(Debug)]
pub struct Fenced {
    pub revision: u64,
    pub replicas: usize,
    pub took: Duration,
}

/// Kills `agent` and returns once every live replica confirmed.
pub async fn kill(client: &async_nats::Client, agent: &str, reason: &str) -> Fenced {
    set(client, None, agent, KillRecord::killed(reason, "test")).await
}

/// Resumes `agent` and returns once every live replica confirmed.
pub async fn resume(client: &async_nats::Client, agent: &str) -> Fenced {
    set(client, None, agent, KillRecord::active("fixed", "test")).await
}

/// [`kill`] through the JetStream domain `domain`: from another region's server.
pub async fn kill_in(
    client: &async_nats::Client,
    domain: &str,
    agent: &str,
    reason: &str,
) -> Fenced {
    set(
        client,
        Some(domain),
        agent,
        KillRecord::killed(reason, "test"),
    )
    .await
}

/// [`resume`] through the JetStream domain `domain`: from another region's server.
pub async fn resume_in(client: &async_nats::Client, domain: &str, agent: &str) -> Fenced {
    set(
        client,
        Some(domain),
        agent,
        KillRecord::active("fixed", "test"),
    )
    .await
}

async fn set(
    client: &async_nats::Client,
    domain: Option<&str>,
    agent: &str,
    record: KillRecord,
) -> Fenced {
    let id = AgentId::new(agent).expect("valid agent id");
    let mut js = match domain {
        Some(domain) => jetstream::with_domain(client.clone(), domain),
        None => jetstream::new(client.clone()),
    };
    // The test's deadline, not async-nats' 5 s, for each request: a loaded CI machine (two
    // gateways and floods on 2 cores, nats-server 2.11) has answered a kill flag's put later
    // than that. One request, no retry: a failure here is still a failure.
    js.set_timeout(crate::DEADLINE);
    let cfg = GatewayConfig::default();
    let objects = mesh_gateway::setup::ensure(&js, &cfg)
        .await
        .expect("mesh objects");
    let mut acks = client
        .subscribe(format!("mesh.gw.fenced.{agent}"))
        .await
        .expect("subscribe fence acks");
    let started = Instant::now();
    let want = record.state;
    let revision = objects
        .kill
        .put(agent, encode(&record).expect("encode").into())
        .await
        .expect("put kill flag");
    mesh_gateway::setup::set_hold(&objects.intents, &cfg, &id, want == KillState::Killed)
        .await
        .expect("hold consumer");
    let live = confirmed_by_all(&objects.gateways, &mut acks, revision, Some(want)).await;
    Fenced {
        revision,
        replicas: live,
        took: started.elapsed(),
    }
}

/// Every audit event recorded so far, oldest first.
pub async fn audit_events(client: &async_nats::Client) -> Vec<AuditEvent> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("MESH_AUDIT").await.expect("audit stream");
    let total = stream.info().await.expect("audit info").state.messages as usize;
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("audit reader");
    let mut msgs = consumer.messages().await.expect("audit messages");
    while out.len() < total {
        let msg = tokio::time::timeout(crate::DEADLINE, msgs.next())
            .await
            .expect("audit events within the deadline")
            .expect("audit stream open")
            .expect("audit message");
        out.push(decode(&msg.payload).expect("audit event decodes"));
    }
    out
}

/// Writes `policy` under `key` (an agent id or `_default`) as `mesh-cli policy set` would.
pub async fn set_policy(client: &async_nats::Client, key: &str, policy: mesh_schemas::Policy) {
    policy.validate().expect("valid policy");
    let js = jetstream::new(client.clone());
    let objects = mesh_gateway::setup::ensure(&js, &GatewayConfig::default())
        .await
        .expect("mesh objects");
    let mut acks = client
        .subscribe(format!("mesh.gw.policy.{key}"))
        .await
        .expect("subscribe policy acks");
    let record = mesh_schemas::PolicyRecord::new(policy, "test");
    let revision = objects
        .policy
        .put(key, encode(&record).expect("encode").into())
        .await
        .expect("put policy");
    // Wait until every live replica applies it.
    confirmed_by_all(&objects.gateways, &mut acks, revision, None).await;
}

/// Waits until every live replica acked `revision` (in `state`, when given) on `acks`;
/// returns how many replicas were live.
async fn confirmed_by_all(
    gateways: &async_nats::jetstream::kv::Store,
    acks: &mut async_nats::Subscriber,
    revision: u64,
    state: Option<KillState>,
) -> usize {
    let live: HashSet<String> = crate::gateways::live_gateways(gateways)
        .await
        .into_iter()
        .collect();
    let mut confirmed = HashSet::new();
    while !live.is_subset(&confirmed) {
        let msg = tokio::time::timeout(crate::DEADLINE, acks.next())
            .await
            .expect("confirmations within the deadline")
            .expect("subscription open");
        let ack: FenceAck = decode(&msg.payload).expect("ack decodes");
        if ack.revision >= revision && state.is_none_or(|s| s == ack.state) {
            confirmed.insert(ack.gateway);
        }
    }
    live.len()
}

/// The current kill record of `agent`, if any.
pub async fn kill_record(client: &async_nats::Client, agent: &str) -> Option<KillRecord> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("mesh-kill").await.ok()?;
    let v = kv.get(agent).await.ok()??;
    decode(&v).ok()
}

/// What waits for `agent` in its parked consumer (pending and in flight), 0 if it has none.
pub async fn held(op: &async_nats::Client, agent: &str) -> u64 {
    let js = jetstream::new(op.clone());
    let Ok(stream) = js.get_stream("MESH_INTENTS").await else {
        return 0;
    };
    stream
        .consumer_info(&format!("in_{agent}"))
        .await
        .map(|i| i.num_pending + i.num_ack_pending as u64)
        .unwrap_or(0)
}
