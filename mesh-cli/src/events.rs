//! Reading the audit trail: events stored in the audit stream (`<prefix>.audit.<kind>.<agent>`),
//! as history from a start time or live as they land. Both use an ordered consumer, which the
//! server forgets when mesh-cli goes away.

use std::time::SystemTime;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::Stream as JsStream;
use futures::StreamExt;
use mesh_schemas::{AgentId, AuditEvent, Subjects};
use serde::Serialize;

use crate::error::CliError;
use crate::mesh::Mesh;

/// Which events to read.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only events about this agent.
    pub agent: Option<AgentId>,
    /// Only events of this kind (`kill`, `resume`, `reject`, ...).
    pub kind: Option<String>,
}

impl Filter {
    /// The subject filter: `<prefix>.audit.<kind|*>.<agent|*>`, or `<prefix>.audit.>`.
    pub fn subject(&self, subjects: &Subjects) -> String {
        match (&self.kind, &self.agent) {
            (None, None) => subjects.audit_filter(),
            (kind, agent) => subjects.audit(
                kind.as_deref().unwrap_or("*"),
                agent.as_ref().map(AgentId::as_str).unwrap_or("*"),
            ),
        }
    }
}

/// One stored audit event.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// Its sequence in the audit stream.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl Entry {
    /// The details a table shows in one column: `pending=12 replicas=2 fence=3.1ms`, then the
    /// event's free-form `detail` (a policy change's `{"from": …, "to": …}`, an automatic kill's
    /// rule).
    pub fn details(&self) -> String {
        let e = &self.event;
        let mut parts = Vec::new();
        if let Some(status) = e.status {
            parts.push(format!("status={status}"));
        }
        if let Some(p) = e.pending {
            parts.push(format!("pending={p}"));
        }
        if let Some(r) = e.replicas {
            parts.push(format!("replicas={r}"));
        }
        if let Some(ms) = e.fence_ms {
            parts.push(format!("fence={ms}ms"));
        }
        if let Some(id) = &e.intent_id {
            parts.push(format!("intent={id}"));
        }
        if let Some(s) = &e.subject {
            parts.push(format!("subject={s}"));
        }
        if let Some(d) = e.detail.as_deref().filter(|d| !d.is_empty()) {
            parts.push(d.to_string());
        }
        parts.join(" ")
    }
}

/// The audit stream, or an error that says it does not exist yet.
async fn audit_stream(mesh: &Mesh) -> Result<Option<JsStream>, CliError> {
    mesh.stream(&mesh.cfg.names.audit_stream).await
}

/// Stored events matching `filter` from `since` (or the beginning), at most the last `limit`.
pub async fn history(
    mesh: &Mesh,
    filter: &Filter,
    since: Option<SystemTime>,
    limit: usize,
) -> Result<Vec<Entry>, CliError> {
    let Some(stream) = audit_stream(mesh).await? else {
        return Ok(Vec::new());
    };
    let deliver_policy = match since {
        Some(t) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from(t),
        },
        None => DeliverPolicy::All,
    };
    let consumer = ordered(mesh, &stream, filter, deliver_policy).await?;
    let what = || {
        format!(
            "could not read the audit stream {}",
            mesh.cfg.names.audit_stream
        )
    };
    if consumer.cached_info().num_pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| CliError::nats(what(), e))?;
    let mut entries = std::collections::VecDeque::new();
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| CliError::nats(what(), e))?;
        let remaining = msg.info().map(|i| i.pending).unwrap_or(0);
        if let Some(entry) = decode(&msg) {
            if entries.len() == limit {
                entries.pop_front();
            }
            if limit > 0 {
                entries.push_back(entry);
            }
        }
        if remaining == 0 {
            break;
        }
    }
    Ok(entries.into())
}

/// Live events matching `filter`, from now on.
pub struct Follow {
    messages: pull::Ordered,
    stream: String,
}

impl Follow {
    /// Starts following; fails when the audit stream does not exist.
    pub async fn start(mesh: &Mesh, filter: &Filter) -> Result<Follow, CliError> {
        let name = mesh.cfg.names.audit_stream.clone();
        let Some(stream) = audit_stream(mesh).await? else {
            return Err(CliError::Usage(format!(
                "the audit stream {name} does not exist yet on this server; start a gateway \
                 (or `mesh-cli up`) first, or check the names in the configuration"
            )));
        };
        let consumer = ordered(mesh, &stream, filter, DeliverPolicy::New).await?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| CliError::nats(format!("could not follow the audit stream {name}"), e))?;
        Ok(Follow {
            messages,
            stream: name,
        })
    }

    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<Entry, CliError>> {
        loop {
            match self.messages.next().await? {
                Ok(msg) => {
                    if let Some(entry) = decode(&msg) {
                        return Some(Ok(entry));
                    }
                }
                Err(e) => {
                    return Some(Err(CliError::nats(
                        format!("could not follow the audit stream {}", self.stream),
                        e,
                    )))
                }
            }
        }
    }
}

async fn ordered(
    mesh: &Mesh,
    stream: &JsStream,
    filter: &Filter,
    deliver_policy: DeliverPolicy,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>, CliError> {
    stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.subject(&mesh.subjects),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            CliError::nats(
                format!(
                    "could not read the audit stream {}",
                    mesh.cfg.names.audit_stream
                ),
                e,
            )
        })
}

fn decode(msg: &async_nats::jetstream::Message) -> Option<Entry> {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    match mesh_schemas::decode::<AuditEvent>(&msg.payload) {
        Ok(event) => Some(Entry {
            seq,
            subject: msg.subject.to_string(),
            event,
        }),
        Err(e) => {
            tracing::warn!(seq, subject = %msg.subject, error = %e, "skipping an unreadable audit event");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_subjects() {
        let s = Subjects::default();
        assert_eq!(Filter::default().subject(&s), "mesh.audit.>");
        let agent = AgentId::new("deployer").ok();
        let f = Filter {
            agent: agent.clone(),
            kind: None,
        };
        assert_eq!(f.subject(&s), "mesh.audit.*.deployer");
        let f = Filter {
            agent,
            kind: Some("kill".into()),
        };
        assert_eq!(f.subject(&s), "mesh.audit.kill.deployer");
        let f = Filter {
            agent: None,
            kind: Some("reject".into()),
        };
        assert_eq!(f.subject(&s), "mesh.audit.reject.*");
    }
}
