//! Rejections: a notice to the sender, a record in the audit trail, then the intent is
//! terminated in JetStream. The record is written (and acknowledged by JetStream) before the
//! intent is let go, so that no rejected intent disappears without a trace.

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use mesh_schemas::headers::{MESH_INTENT_ID, MESH_REASON, MESH_STATUS, NATS_MSG_ID};
use mesh_schemas::{encode, AgentId, AuditEvent, AuditKind, RejectionNotice, Subjects};

/// Why an intent is refused, with its status code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the intent is malformed (subject, headers, size).
    Invalid(String),
    /// 403: the sender is killed, or the action is not allowed.
    Forbidden(String),
    /// 429: over a cap with `on_breach = block`, until the window rolls.
    Limited(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Invalid(_) => 400,
            Refusal::Forbidden(_) => 403,
            Refusal::Limited(_) => 429,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Refusal::Invalid(r) | Refusal::Forbidden(r) | Refusal::Limited(r) => r,
        }
    }
}

/// A rejection could not be recorded; the intent stays in JetStream and is retried.
#[derive(Debug, thiserror::Error)]
pub enum RejectError {
    #[error("could not encode the audit record: {0}")]
    Encode(#[from] mesh_schemas::CodecError),
    #[error("could not write the rejection to the audit trail: {0}")]
    Audit(String),
}

/// Writes rejection notices and records.
#[derive(Clone)]
pub struct Rejector {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub gateway_id: String,
    /// Counts rejections by status and reason class.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Rejector {
    /// Notices the sender (when its id is valid), records the rejection, and terminates `msg`.
    pub async fn reject(
        &self,
        msg: &jetstream::Message,
        from: Option<&AgentId>,
        intent_id: &str,
        stream_seq: u64,
        refusal: &Refusal,
    ) -> Result<(), RejectError> {
        let subject = msg.subject.as_str();
        self.record(subject, from, intent_id, stream_seq, refusal)
            .await?;
        if let Err(e) = msg.ack_with(AckKind::Term).await {
            // The record is written; a redelivery will be rejected again under the same audit id.
            tracing::warn!(subject, error = %e, "could not terminate rejected intent");
        }
        Ok(())
    }

    /// Records a rejection in the audit trail and notices the sender (when its id is valid).
    pub async fn record(
        &self,
        subject: &str,
        from: Option<&AgentId>,
        intent_id: &str,
        stream_seq: u64,
        refusal: &Refusal,
    ) -> Result<(), RejectError> {
        let agent = from.map(AgentId::as_str).unwrap_or("_invalid");
        let mut event = AuditEvent::new(
            AuditKind::Reject,
            agent,
            format!("gateway:{}", self.gateway_id),
            refusal.reason(),
        );
        event.intent_id = Some(intent_id.to_string());
        event.subject = Some(subject.to_string());
        event.status = Some(refusal.status());
        self.audit(&event, &format!("reject-{stream_seq}")).await?;
        self.metrics.rejected(refusal);

        if let Some(from) = from {
            let notice =
                RejectionNotice::new(intent_id, subject, refusal.status(), refusal.reason());
            let mut headers = HeaderMap::new();
            headers.insert(MESH_STATUS, refusal.status().to_string().as_str());
            headers.insert(MESH_REASON, header_safe(refusal.reason()).as_str());
            headers.insert(MESH_INTENT_ID, intent_id);
            // A notice is best effort (core NATS); the audit record above is the durable trace.
            if let Err(e) = self
                .client
                .publish_with_headers(
                    self.subjects.rejected(from),
                    headers,
                    encode(&notice)?.into(),
                )
                .await
            {
                tracing::warn!(%from, error = %e, "could not send rejection notice");
            }
        }
        tracing::info!(
            subject,
            intent_id,
            status = refusal.status(),
            reason = refusal.reason(),
            "intent rejected"
        );
        Ok(())
    }

    /// Writes one audit event and waits for JetStream to store it; `dedup_id` makes retries safe.
    pub async fn audit(&self, event: &AuditEvent, dedup_id: &str) -> Result<(), RejectError> {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MSG_ID, dedup_id);
        let subject = self.subjects.audit(event.kind.as_str(), &event.agent);
        let ack = self
            .js
            .publish_with_headers(subject, headers, encode(event)?.into())
            .await
            .map_err(|e| RejectError::Audit(e.to_string()))?;
        ack.await.map_err(|e| RejectError::Audit(e.to_string()))?;
        Ok(())
    }
}

/// Header values cannot hold line breaks.
pub fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}
