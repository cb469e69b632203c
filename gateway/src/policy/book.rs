//! The policy book: every agent's policy and the mesh-wide `_default`, fed by a KV watch of
//! `mesh-policy`. A record that does not decode or validate is logged and recorded in the audit
//! trail, and the last valid policy of that key stays in force: a bad write never lifts a limit.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use futures::StreamExt;
use mesh_schemas::policy::{parse_duration, DEFAULT_POLICY_KEY};
use mesh_schemas::{decode, AgentId, AuditEvent, AuditKind, Policy, PolicyRecord, Rate};
use tokio::sync::watch;

use crate::shared::Shared;

/// An agent's policy after merging over `_default`, with its parsed values.
#[derive(Clone, Debug, Default)]
pub struct Effective {
    pub policy: Policy,
    pub rate: Option<Rate>,
    pub degraded_after: Option<Duration>,
    pub unreachable_after: Option<Duration>,
}

impl Effective {
    fn from_policy(policy: Policy) -> Self {
        // Stored policies were validated when they were accepted, so parsing cannot fail here;
        // a value that somehow does not parse is treated as unset.
        let rate = policy.rate.as_deref().and_then(|r| Rate::parse(r).ok());
        let degraded_after = policy
            .degraded_after
            .as_deref()
            .and_then(|d| parse_duration("degraded_after", d).ok());
        let unreachable_after = policy
            .unreachable_after
            .as_deref()
            .and_then(|d| parse_duration("unreachable_after", d).ok());
        Effective {
            policy,
            rate,
            degraded_after,
            unreachable_after,
        }
    }

    /// Whether any cap or ceiling is set (the budget is skipped otherwise).
    pub fn has_caps(&self) -> bool {
        let p = &self.policy;
        p.max_intents_per_hour.is_some()
            || p.max_intents_per_day.is_some()
            || p.max_cost_usd_per_day.is_some()
            || p.max_cost_usd.is_some()
    }
}

/// Policies by key (`<id>` or `_default`), plus a cache of merged ones.
#[derive(Debug)]
pub struct PolicyBook {
    raw: RwLock<HashMap<String, Policy>>,
    merged: RwLock<HashMap<AgentId, Arc<Effective>>>,
    /// False until the watch has replayed every policy: nothing is delivered before.
    ready: watch::Sender<bool>,
}

impl Default for PolicyBook {
    fn default() -> Self {
        PolicyBook {
            raw: RwLock::new(HashMap::new()),
            merged: RwLock::new(HashMap::new()),
            ready: watch::channel(false).0,
        }
    }
}

impl PolicyBook {
    /// The effective policy of `id`.
    pub fn effective(&self, id: &AgentId) -> Arc<Effective> {
        if let Some(e) = self
            .merged
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return e.clone();
        }
        let raw = self.raw.read().unwrap_or_else(|e| e.into_inner());
        let default = raw.get(DEFAULT_POLICY_KEY).cloned().unwrap_or_default();
        let own = raw.get(id.as_str()).cloned().unwrap_or_default();
        drop(raw);
        let eff = Arc::new(Effective::from_policy(own.merged_over(&default)));
        self.merged
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), eff.clone());
        eff
    }

    /// Sets or removes the policy under `key`; returns the previous one.
    pub fn set(&self, key: &str, policy: Option<Policy>) -> Option<Policy> {
        let prev = {
            let mut raw = self.raw.write().unwrap_or_else(|e| e.into_inner());
            match policy {
                Some(p) => raw.insert(key.to_string(), p),
                None => raw.remove(key),
            }
        };
        self.merged
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        prev
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn ready_rx(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn set_ready(&self, ready: bool) {
        self.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }
}

/// Follows `mesh-policy` until the gateway stops.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match watch_once(&shared).await {
            Ok(()) => return,
            Err(why) => {
                shared.policies.set_ready(false);
                tracing::error!(
                    why,
                    "policy watch broken; delivering nothing until it is back"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn watch_once(shared: &Arc<Shared>) -> Result<(), String> {
    let kv = &shared.objects.policy;
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| format!("cannot watch {}: {e}", shared.cfg.names.policy_bucket))?;
    // Fresh from the server: `kv.status()` returns the info cached when the bucket was opened.
    let info = kv
        .stream
        .get_info()
        .await
        .map_err(|e| format!("cannot read {}: {e}", shared.cfg.names.policy_bucket))?;
    if info.state.messages == 0 {
        shared.policies.set_ready(true);
    }
    loop {
        let entry = tokio::select! {
            e = watch.next() => e,
            _ = shared.cancel.cancelled() => return Ok(()),
            _ = crate::control::killwatch::disconnected(&shared.client) => {
                return Err("disconnected from NATS".to_string());
            }
        };
        let entry = match entry {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(format!("watch error: {e}")),
            None => return Err("watch ended".to_string()),
        };
        let key = entry.key.clone();
        match entry.operation {
            Operation::Delete | Operation::Purge => {
                shared.policies.set(&key, None);
                tracing::info!(key, "policy removed");
                confirm(shared, &key, entry.revision).await;
            }
            Operation::Put => match decode::<PolicyRecord>(&entry.value)
                .map_err(|e| e.to_string())
                .and_then(|r| r.policy.validate().map(|()| r).map_err(|e| e.to_string()))
            {
                Ok(rec) => {
                    shared.policies.set(&key, Some(rec.policy));
                    tracing::info!(key, revision = entry.revision, "policy applied");
                    confirm(shared, &key, entry.revision).await;
                }
                Err(why) => report_bad(shared, &key, entry.revision, &why).await,
            },
        }
        if entry.delta == 0 {
            shared.policies.set_ready(true);
        }
    }
}

/// Tells whoever changed the policy that this replica applies `revision` now.
async fn confirm(shared: &Shared, key: &str, revision: u64) {
    let Ok(agent) = AgentId::new(key) else { return };
    let ack = mesh_schemas::FenceAck::new(
        shared.gateway_id.clone(),
        agent,
        revision,
        mesh_schemas::KillState::Active,
    );
    if let Ok(bytes) = mesh_schemas::encode(&ack) {
        let _ = shared
            .client
            .publish(shared.subjects.policy_applied(key), bytes.into())
            .await;
    }
}

/// A policy record that cannot be used: say so loudly, keep the last valid one.
async fn report_bad(shared: &Shared, key: &str, revision: u64, why: &str) {
    let kept = if shared
        .policies
        .raw
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(key)
    {
        "the last valid policy stays in force"
    } else {
        "no valid policy was set for this key before; the default applies"
    };
    tracing::error!(
        key,
        revision,
        why,
        kept,
        "invalid policy record ignored; fix it with `mesh-cli policy set`"
    );
    let mut event = AuditEvent::new(
        AuditKind::Policy,
        key,
        format!("gateway:{}", shared.gateway_id),
        format!("invalid policy record (revision {revision}) ignored: {why}; {kept}"),
    );
    event.detail = Some(format!("revision={revision}"));
    if let Err(e) = shared
        .rejector
        .audit(&event, &format!("policy-invalid-{key}-{revision}"))
        .await
    {
        tracing::warn!(error = %e, "could not record the invalid policy");
    }
}
