//! Policies in KV (`mesh-policy[<id>|_default]`): reading a key's record, changing it with
//! compare-and-set, waiting until every live gateway replica has applied the change, and
//! recording it in the audit trail with what it was before and what it is now.
//!
//! A change is written as a JetStream publish to the bucket's subject with
//! `Nats-Expected-Last-Subject-Sequence`, so two operators changing one key at once cannot lose
//! each other's change (`--merge` reads, merges and writes against the revision it read), and the
//! PubAck gives the exact revision that the replicas confirm on `<prefix>.gw.policy.<key>`.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use mesh_schemas::headers::NATS_MSG_ID;
use mesh_schemas::{AgentId, AuditEvent, AuditKind, Policy, PolicyRecord};
use serde::Serialize;
use tokio::time::Instant;

use crate::error::CliError;
use crate::fence::{self, Fence};
use crate::mesh::Mesh;

/// How often a compare-and-set write is retried when another writer got in first.
const CAS_ATTEMPTS: usize = 8;

/// A key's current value in `mesh-policy`.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The KV revision of the value.
    pub revision: u64,
    /// The record, or why it cannot be read (a value written behind mesh-cli's back).
    pub record: Result<PolicyRecord, String>,
}

impl Stored {
    /// The policy, when the record is readable and valid.
    pub fn policy(&self) -> Option<&Policy> {
        self.record.as_ref().ok().map(|r| &r.policy)
    }
}

/// What a key holds now: `None` when it has no value (never set, or removed). `revision` is
/// the key's last revision, delete markers included (0 when it never had one).
async fn current(store: &kv::Store, key: &str) -> Result<(Option<Stored>, u64), CliError> {
    let entry = store
        .entry(key)
        .await
        .map_err(|e| CliError::nats(format!("could not read {}[{key}]", store.name), e))?;
    Ok(match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let record = mesh_schemas::decode::<PolicyRecord>(&e.value)
                .map_err(|err| err.to_string())
                .and_then(|r| match r.policy.validate() {
                    Ok(()) => Ok(r),
                    Err(err) => Err(err.to_string()),
                });
            (
                Some(Stored {
                    revision: e.revision,
                    record,
                }),
                e.revision,
            )
        }
        Some(e) => (None, e.revision),
        None => (None, 0),
    })
}

/// The stored policy of `key`, if it has one.
pub async fn read(store: &kv::Store, key: &str) -> Result<Option<Stored>, CliError> {
    Ok(current(store, key).await?.0)
}

/// What a change did.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// The key: an agent id or `_default`.
    pub key: String,
    /// The policy before (`None`: there was none, or it could not be read).
    pub from: Option<Policy>,
    /// Why the previous value could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_unreadable: Option<String>,
    /// The policy now (`None`: removed).
    pub to: Option<Policy>,
    pub by: String,
    /// The KV revision written; `None` when there was nothing to remove.
    pub revision: Option<u64>,
    /// Whether every live gateway replica confirmed that it applies the change.
    pub confirmed: bool,
    /// The replicas and how long they took.
    pub replicas: Fence,
}

impl Change {
    /// One sentence for people.
    pub fn summary(&self) -> String {
        let what = match (&self.to, self.revision) {
            (Some(_), _) => format!("policy of {} set", self.key),
            (None, Some(_)) => format!("policy of {} removed", self.key),
            (None, None) => return format!("{} has no policy; nothing to remove", self.key),
        };
        let f = &self.replicas;
        let replicas = if f.live.is_empty() {
            "0 gateway replicas live; every replica applies it when it starts".to_string()
        } else if f.complete() {
            format!(
                "{}/{} replicas applied it in {} ms",
                f.live.len(),
                f.live.len(),
                fence::ms(f.elapsed)
            )
        } else {
            format!(
                "{}/{} replicas applied it (not confirmed: {})",
                f.live.len() - f.missing.len(),
                f.live.len(),
                f.missing.join(", ")
            )
        };
        format!("{what}: {replicas}")
    }
}

/// A change to make: what the key should hold, given what it holds now.
pub struct Edit<'a> {
    pub key: &'a str,
    pub by: &'a str,
    /// The audit reason: "policy set", "policy removed", plus the operator's words.
    pub reason: String,
    /// How long to wait for the replicas' confirmations.
    pub timeout: Duration,
}

impl Edit<'_> {
    /// Computes the new value from the current one (`None` removes the key), writes it with
    /// compare-and-set, waits for the replicas and records the change in the audit trail.
    /// Removing a key that holds nothing writes nothing.
    pub async fn apply(
        &self,
        mesh: &Mesh,
        mut compute: impl FnMut(Option<&Stored>) -> Result<Option<Policy>, CliError>,
    ) -> Result<Change, CliError> {
        let objects = mesh.ensure().await?;
        let store = &objects.policy;
        let key_id = AgentId::new(self.key)
            .map_err(|e| CliError::Usage(format!("policy key {:?}: {e}", self.key)))?;
        let applied = mesh.subjects.policy_applied(self.key);
        let mut acks = mesh
            .client
            .subscribe(applied.clone())
            .await
            .map_err(|e| CliError::nats(format!("could not subscribe to {applied}"), e))?;

        let mut attempt = 0;
        let (old, to, revision, started) = loop {
            attempt += 1;
            let (old, last) = current(store, self.key).await?;
            let to = compute(old.as_ref())?;
            if to.is_none() && old.is_none() {
                break (old, None, None, Instant::now());
            }
            let started = Instant::now();
            match self.write(mesh, store, to.as_ref(), last).await {
                Ok(revision) => break (old, to, Some(revision), started),
                Err(Conflict::Lost) if attempt < CAS_ATTEMPTS => continue,
                Err(Conflict::Lost) => {
                    return Err(CliError::nats(
                        format!("could not write the policy of {}", self.key),
                        std::io::Error::other(
                            "it kept changing while mesh-cli wrote it; run the command again",
                        ),
                    ))
                }
                Err(Conflict::Failed(e)) => return Err(e),
            }
        };

        let fence = match revision {
            Some(revision) => {
                let live = fence::live_replicas(&objects.gateways).await?;
                fence::wait(
                    &mut acks,
                    &key_id,
                    revision,
                    live,
                    started,
                    started + self.timeout,
                )
                .await
            }
            None => Fence {
                live: Vec::new(),
                confirmed: Vec::new(),
                missing: Vec::new(),
                elapsed: Duration::ZERO,
            },
        };
        if let Err(e) = acks.unsubscribe().await {
            tracing::debug!(error = %e, "could not unsubscribe from policy acks");
        }

        let from = old.as_ref().and_then(|s| s.policy().cloned());
        let from_unreadable = old.as_ref().and_then(|s| s.record.clone().err());
        let change = Change {
            key: self.key.to_string(),
            from,
            from_unreadable,
            to,
            by: self.by.to_string(),
            revision,
            confirmed: fence.complete(),
            replicas: fence,
        };
        if let Some(revision) = revision {
            self.audit(mesh, &change, revision).await?;
        }
        Ok(change)
    }

    /// Writes `to` (or a delete marker) if the key's last revision is still `last`.
    async fn write(
        &self,
        mesh: &Mesh,
        store: &kv::Store,
        to: Option<&Policy>,
        last: u64,
    ) -> Result<u64, Conflict> {
        let subject = mesh.kv_subject(&store.name, self.key);
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last.to_string().as_str(),
        );
        let payload = match to {
            Some(policy) => {
                let record = PolicyRecord::new(policy.clone(), self.by);
                mesh_schemas::encode(&record)
                    .map_err(|e| {
                        Conflict::Failed(CliError::nats("could not encode the policy record", e))
                    })?
                    .into()
            }
            None => {
                headers.insert("KV-Operation", "DEL");
                bytes::Bytes::new()
            }
        };
        let what = || format!("could not write {}[{}]", store.name, self.key);
        let ack = mesh
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| Conflict::Failed(CliError::nats(what(), e)))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(Conflict::Lost),
            Err(e) => Err(Conflict::Failed(CliError::nats(what(), e))),
        }
    }

    /// The `policy` audit event: who, and `{"from": …, "to": …}` as JSON in `detail`.
    async fn audit(&self, mesh: &Mesh, change: &Change, revision: u64) -> Result<(), CliError> {
        let mut event = AuditEvent::new(AuditKind::Policy, self.key, self.by, &self.reason);
        let mut detail = serde_json::json!({ "from": change.from, "to": change.to });
        if let Some(why) = &change.from_unreadable {
            detail["from_unreadable"] = serde_json::Value::String(why.clone());
        }
        event.detail = Some(detail.to_string());
        event.replicas = Some(u32::try_from(change.replicas.confirmed.len()).unwrap_or(u32::MAX));
        event.fence_ms = Some(fence::ms(change.replicas.elapsed));
        publish_audit(mesh, &event, &format!("policy-{}-{revision}", self.key)).await
    }
}

/// Why a compare-and-set write did not happen.
enum Conflict {
    /// Another writer changed the key since it was read: read again.
    Lost,
    Failed(CliError),
}

/// Stores `event` in the audit trail on `<prefix>.audit.<kind>.<agent>`, deduplicated by
/// `msg_id`.
pub async fn publish_audit(mesh: &Mesh, event: &AuditEvent, msg_id: &str) -> Result<(), CliError> {
    let kind = event.kind.as_str();
    let bytes = mesh_schemas::encode(event)
        .map_err(|e| CliError::nats("could not encode the audit event", e))?;
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MSG_ID, msg_id);
    let subject = mesh.subjects.audit(kind, &event.agent);
    let what = || format!("could not record the {kind} in the audit trail ({subject})");
    mesh.js
        .publish_with_headers(subject.clone(), headers, bytes.into())
        .await
        .map_err(|e| CliError::nats(what(), e))?
        .await
        .map_err(|e| CliError::nats(what(), e))?;
    Ok(())
}
