//! Notices for an agent: rejections of the intents it sent (`<prefix>.agent.<me>.rejected`) and
//! kill and resume notices (`<prefix>.agent.<me>.control`).
//!
//! Both are core NATS subscriptions: a notice sent while no instance listens is not kept. The
//! audit trail (`mesh-cli audit`) has every rejection on record; the kill flag itself is enforced
//! by the gateway whether or not the agent hears the notice.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::{Client, Message, SubscribeError, Subscriber};
use futures::{Stream, StreamExt};
use mesh_schemas::headers::{MESH_INTENT_ID, MESH_REASON, MESH_STATUS};
use mesh_schemas::{ControlNotice, RejectionNotice};

use crate::{roundtrip, Agent};

/// One of this agent's intents that the gateway refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// The refused intent's id, as in its [`crate::SendReceipt`].
    pub intent_id: String,
    /// 400 invalid, 403 killed or action not allowed, 429 over a limit.
    pub status: u16,
    /// Why, in words (a kill echoes the kill's reason).
    pub reason: String,
    /// The intent's subject; empty when the notice carried only headers.
    pub subject: String,
}

/// Why a notice stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoticeError {
    #[error("could not subscribe to {subject}")]
    Subscribe {
        subject: String,
        #[source]
        source: SubscribeError,
    },
    #[error("the server did not confirm the subscription to {subject}; check the connection")]
    NotConfirmed {
        subject: String,
        #[source]
        source: roundtrip::ConfirmError,
    },
}

impl Agent {
    /// Rejection notices for the intents this agent sends. Subscribe before sending to be sure
    /// to hear about every one.
    pub async fn rejections(&self) -> Result<Rejections, NoticeError> {
        let subject = self.subjects.rejected(&self.id);
        Ok(Rejections {
            sub: subscribe(&self.client, subject).await?,
        })
    }

    /// Kill and resume notices for this agent, for an agent that stops its own work too.
    /// Enforcement never depends on it: the gateway stops deliveries either way.
    pub async fn control(&self) -> Result<ControlNotices, NoticeError> {
        let subject = self.subjects.control(&self.id);
        Ok(ControlNotices {
            sub: subscribe(&self.client, subject).await?,
        })
    }
}

async fn subscribe(client: &Client, subject: String) -> Result<Subscriber, NoticeError> {
    let sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|source| NoticeError::Subscribe {
            subject: subject.clone(),
            source,
        })?;
    roundtrip::confirm(client)
        .await
        .map_err(|source| NoticeError::NotConfirmed { subject, source })?;
    Ok(sub)
}

/// A stream of [`Rejection`]s; notices that cannot be read are logged and skipped.
#[derive(Debug)]
pub struct Rejections {
    sub: Subscriber,
}

impl Stream for Rejections {
    type Item = Rejection;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Rejection>> {
        loop {
            match self.sub.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => match parse_rejection(&msg) {
                    Some(r) => return Poll::Ready(Some(r)),
                    None => {
                        tracing::warn!(subject = %msg.subject, "ignoring a rejection notice without Mesh-Status and Mesh-Intent-Id headers or a readable body")
                    }
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Reads a rejection from the headers, falling back to the `RejectionNotice` body.
fn parse_rejection(msg: &Message) -> Option<Rejection> {
    let body: Option<RejectionNotice> = mesh_schemas::decode(&msg.payload).ok();
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
            .filter(|v| !v.is_empty())
    };
    let status = header(MESH_STATUS)
        .and_then(|s| s.trim().parse::<u16>().ok())
        .or(body.as_ref().map(|b| b.status))?;
    let intent_id = header(MESH_INTENT_ID).or(body.as_ref().map(|b| b.intent_id.clone()))?;
    let reason = header(MESH_REASON)
        .or(body.as_ref().map(|b| b.reason.clone()))
        .unwrap_or_default();
    let subject = body.map(|b| b.subject).unwrap_or_default();
    Some(Rejection {
        intent_id,
        status,
        reason,
        subject,
    })
}

/// A stream of [`ControlNotice`]s; notices that cannot be decoded are logged and skipped.
#[derive(Debug)]
pub struct ControlNotices {
    sub: Subscriber,
}

impl Stream for ControlNotices {
    type Item = ControlNotice;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ControlNotice>> {
        loop {
            match self.sub.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => match mesh_schemas::decode::<ControlNotice>(&msg.payload)
                {
                    Ok(n) => return Poll::Ready(Some(n)),
                    Err(e) => {
                        tracing::warn!(subject = %msg.subject, error = %e, "ignoring a control notice that cannot be decoded")
                    }
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;

    fn message(headers: Option<HeaderMap>, payload: Vec<u8>) -> Message {
        Message {
            subject: "mesh.agent.a.rejected".into(),
            reply: None,
            length: payload.len(),
            payload: payload.into(),
            headers,
            status: None,
            description: None,
        }
    }

    #[test]
    fn reads_headers_first() {
        let mut h = HeaderMap::new();
        h.insert(MESH_STATUS, "403");
        h.insert(MESH_REASON, "killed: deployed 47 of 3");
        h.insert(MESH_INTENT_ID, "i-9");
        let body = RejectionNotice::new("i-9", "mesh.intent.a.b.deploy", 403, "killed");
        let encoded = mesh_schemas::encode(&body).expect("encodes");
        let r = parse_rejection(&message(Some(h), encoded)).expect("parses");
        assert_eq!(r.status, 403);
        assert_eq!(r.intent_id, "i-9");
        assert_eq!(r.reason, "killed: deployed 47 of 3");
        assert_eq!(r.subject, "mesh.intent.a.b.deploy");
    }

    #[test]
    fn falls_back_to_the_body() {
        let body = RejectionNotice::new("i-1", "mesh.intent.a.b.x", 429, "over 10/s");
        let encoded = mesh_schemas::encode(&body).expect("encodes");
        let r = parse_rejection(&message(None, encoded)).expect("parses");
        assert_eq!(
            r,
            Rejection {
                intent_id: "i-1".into(),
                status: 429,
                reason: "over 10/s".into(),
                subject: "mesh.intent.a.b.x".into(),
            }
        );
    }

    #[test]
    fn nothing_readable_is_skipped() {
        assert_eq!(parse_rejection(&message(None, b"garbage".to_vec())), None);
        let mut h = HeaderMap::new();
        h.insert(MESH_STATUS, "403");
        assert_eq!(parse_rejection(&message(Some(h), Vec::new())), None);
    }
}
