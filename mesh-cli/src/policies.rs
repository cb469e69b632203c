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
use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use mesh_gateway::setup;
use mesh_schemas::headers::NATS_MSG_ID;
use mesh_schemas::{AgentId, AuditEvent, AuditKind, Policy, PolicyRecord};
use serde::Serialize;
use tokio::time::Instant;

use crate::error::CliError;
use crate::fence::{self, Fence};
use crate::mesh::Mesh;
use crate::retry;

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
    ///
    /// Every JetStream step is retried until `timeout` has passed since the start, as a kill's
    /// are ([`retry`]): for some seconds after a node loss a cluster answers nothing about the
    /// buckets that node led. Only [`retry::transient`] errors are retried; an error of
    /// `compute` (the operator's input) ends the change at once.
    pub async fn apply(
        &self,
        mesh: &Mesh,
        mut compute: impl FnMut(Option<&Stored>) -> Result<Option<Policy>, CliError>,
    ) -> Result<Change, CliError> {
        let deadline = Instant::now() + self.timeout;
        let js = mesh.js_within(retry::ATTEMPT_TIMEOUT);
        let gateway_config = mesh.cfg.gateway_config();
        let objects = retry::until_while(
            deadline,
            "open the mesh's streams and buckets",
            retry::transient,
            || async { Ok(setup::ensure(&js, &gateway_config).await?) },
        )
        .await
        .map_err(|g| self.not_written(g))?;
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
        // A write whose PubAck was lost may have been stored: what the key held before it, its
        // last revision then, and the record written (`None`: a delete).
        let mut unsure: Option<(Option<Stored>, u64, Option<PolicyRecord>)> = None;
        let (old, to, revision, started) = loop {
            attempt += 1;
            let (old, last) =
                retry::until_while(deadline, "read the policy", retry::transient, || {
                    current(store, self.key)
                })
                .await
                .map_err(|g| self.not_written(g))?;
            if let Some((before, last_then, written)) = unsure.take() {
                if landed(written.as_ref(), old.as_ref(), last, last_then) {
                    let to = written.map(|r| r.policy);
                    break (before, to, Some(last), Instant::now());
                }
            }
            let to = compute(old.as_ref())?;
            if to.is_none() && old.is_none() {
                break (old, None, None, Instant::now());
            }
            let record = to
                .as_ref()
                .map(|policy| PolicyRecord::new(policy.clone(), self.by));
            let started = Instant::now();
            let written = retry::until_while(
                deadline,
                "write the policy",
                |c: &Conflict| matches!(c, Conflict::Failed(e) if retry::transient(e)),
                || self.write(mesh, &js, store, record.as_ref(), last),
            )
            .await;
            let g = match written {
                Ok(revision) => break (old, to, Some(revision), started),
                Err(g) => g,
            };
            match g.last {
                Conflict::Lost => {
                    if g.attempts > 1 {
                        // An earlier attempt timed out: it may be the write that got in first.
                        unsure = Some((old, last, record));
                    }
                    if attempt >= CAS_ATTEMPTS {
                        return Err(CliError::nats(
                            format!("could not write the policy of {}", self.key),
                            std::io::Error::other(
                                "it kept changing while mesh-cli wrote it; run the command again",
                            ),
                        ));
                    }
                }
                Conflict::Failed(last) if g.attempts > 1 && retry::transient(&last) => {
                    // Some attempt timed out and may have been stored after all.
                    return Err(CliError::nats(
                        format!(
                            "the policy of {} may not be written: NATS JetStream did not \
                             acknowledge the write within {} ({} attempts); check with \
                             `mesh-cli policy get` once most nodes of the cluster are up (`nats \
                             server report jetstream`), and run the command again if needed",
                            self.key,
                            humantime::format_duration(self.timeout),
                            g.attempts
                        ),
                        last,
                    ));
                }
                Conflict::Failed(last) => {
                    return Err(self.not_written(retry::GaveUp {
                        attempts: g.attempts,
                        last,
                    }))
                }
            }
        };

        let fence = match revision {
            Some(revision) => {
                let live = retry::until_while(
                    deadline,
                    "list the live gateway replicas",
                    retry::transient,
                    || fence::live_replicas(&objects.gateways),
                )
                .await
                .map_err(|g| g.last)?;
                fence::wait(&mut acks, &key_id, revision, live, started, deadline).await
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
            retry::until_while(
                deadline,
                "record the change in the audit trail",
                retry::transient,
                || self.audit(mesh, &js, &change, revision),
            )
            .await
            .map_err(|g| g.last)?;
        }
        Ok(change)
    }

    /// The error of a step before the write that did not succeed in time: nothing changed.
    fn not_written(&self, g: retry::GaveUp<CliError>) -> CliError {
        if !retry::transient(&g.last) {
            return g.last;
        }
        CliError::nats(
            format!(
                "the policy of {} was NOT changed: NATS JetStream did not answer within {} \
                 ({} attempts); check that most nodes of the cluster are up (`nats server \
                 report jetstream`), then run the command again",
                self.key,
                humantime::format_duration(self.timeout),
                g.attempts
            ),
            g.last,
        )
    }

    /// Writes `record` (or, when `None`, a delete marker) if the key's last revision is still
    /// `last`.
    async fn write(
        &self,
        mesh: &Mesh,
        js: &jetstream::Context,
        store: &kv::Store,
        record: Option<&PolicyRecord>,
        last: u64,
    ) -> Result<u64, Conflict> {
        let subject = mesh.kv_subject(&store.name, self.key);
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last.to_string().as_str(),
        );
        let payload = match record {
            Some(record) => mesh_schemas::encode(record)
                .map_err(|e| {
                    Conflict::Failed(CliError::nats("could not encode the policy record", e))
                })?
                .into(),
            None => {
                headers.insert("KV-Operation", "DEL");
                bytes::Bytes::new()
            }
        };
        let what = || format!("could not write {}[{}]", store.name, self.key);
        let ack = js
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
    async fn audit(
        &self,
        mesh: &Mesh,
        js: &jetstream::Context,
        change: &Change,
        revision: u64,
    ) -> Result<(), CliError> {
        let mut event = AuditEvent::new(AuditKind::Policy, self.key, self.by, &self.reason);
        let mut detail = serde_json::json!({ "from": change.from, "to": change.to });
        if let Some(why) = &change.from_unreadable {
            detail["from_unreadable"] = serde_json::Value::String(why.clone());
        }
        event.detail = Some(detail.to_string());
        event.replicas = Some(u32::try_from(change.replicas.confirmed.len()).unwrap_or(u32::MAX));
        event.fence_ms = Some(fence::ms(change.replicas.elapsed));
        publish_audit(mesh, js, &event, &format!("policy-{}-{revision}", self.key)).await
    }
}

/// Whether a write whose PubAck was lost is what the key holds now (revision `last`; it was
/// `last_then` before): the very record written (its time and author make it ours), or, for a
/// delete, a delete marker written since. Another operator's delete in between looks the
/// same; the key ends up removed either way.
fn landed(written: Option<&PolicyRecord>, now: Option<&Stored>, last: u64, last_then: u64) -> bool {
    match (written, now) {
        (Some(record), Some(stored)) => stored.record.as_ref().ok() == Some(record),
        (None, None) => last > last_then,
        _ => false,
    }
}

/// Why a compare-and-set write did not happen.
enum Conflict {
    /// Another writer changed the key since it was read: read again.
    Lost,
    Failed(CliError),
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conflict::Lost => f.write_str("the key changed since it was read"),
            Conflict::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Stores `event` in the audit trail on `<prefix>.audit.<kind>.<agent>`, deduplicated by
/// `msg_id`.
pub async fn publish_audit(
    mesh: &Mesh,
    js: &jetstream::Context,
    event: &AuditEvent,
    msg_id: &str,
) -> Result<(), CliError> {
    let kind = event.kind.as_str();
    let bytes = mesh_schemas::encode(event)
        .map_err(|e| CliError::nats("could not encode the audit event", e))?;
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MSG_ID, msg_id);
    let subject = mesh.subjects.audit(kind, &event.agent);
    let what = || format!("could not record the {kind} in the audit trail ({subject})");
    js.publish_with_headers(subject.clone(), headers, bytes.into())
        .await
        .map_err(|e| CliError::nats(what(), e))?
        .await
        .map_err(|e| CliError::nats(what(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(record: &PolicyRecord, revision: u64) -> Stored {
        Stored {
            revision,
            record: Ok(record.clone()),
        }
    }

    #[test]
    fn a_write_whose_ack_was_lost_is_recognised_by_its_record() {
        let policy = Policy {
            max_intents_per_day: Some(10),
            ..Policy::default()
        };
        let ours = PolicyRecord::new(policy.clone(), "alice");
        let mut theirs = PolicyRecord::new(policy, "bob");
        theirs.at_unix_ms = ours.at_unix_ms;
        assert!(landed(Some(&ours), Some(&stored(&ours, 8)), 8, 7));
        assert!(!landed(Some(&ours), Some(&stored(&theirs, 8)), 8, 7));
        assert!(!landed(Some(&ours), None, 8, 7));
        // A delete: the key is removed at a later revision than the one it was written against.
        assert!(landed(None, None, 8, 7));
        assert!(!landed(None, None, 7, 7));
        assert!(!landed(None, Some(&stored(&theirs, 8)), 8, 7));
    }
}
