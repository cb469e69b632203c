//! Sending an intent: a JetStream publish to `<prefix>.intent.<me>.<to>.<action>` with an intent
//! id in `Nats-Msg-Id`, awaited until JetStream has stored it (the PubAck).
//!
//! The PubAck is the promise the mesh makes to a sender: from then on the intent is delivered,
//! pending or rejected with a record, never lost. Sending the same intent id again within the
//! stream's duplicate window (two minutes) stores nothing new, so a sender that did not get its
//! receipt can simply send again with the same [`SendOptions::msg_id`].

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use mesh_schemas::headers::{MAX_MSG_ID_LEN, MESH_COST, NATS_MSG_ID};
use mesh_schemas::AgentId;

use crate::Agent;

/// What a stored intent can be found by.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendReceipt {
    /// The intent id (`Nats-Msg-Id`); the recipient sees it as `Mesh-Intent-Id`.
    pub intent_id: String,
    /// The intent's sequence in the intents stream.
    pub stream_seq: u64,
    /// True when JetStream already had an intent with this id (a resend): nothing new was stored.
    pub duplicate: bool,
}

/// Optional parts of an intent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SendOptions {
    /// The intent id; a fresh unique one when `None`. Set it to make a retry idempotent.
    pub msg_id: Option<String>,
    /// USD attributed to this intent (`Mesh-Cost`), counted against the sender's cost ceiling.
    pub cost_usd: Option<f64>,
}

impl SendOptions {
    /// Options with an explicit intent id.
    pub fn msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = Some(id.into());
        self
    }

    /// Options with a cost in USD.
    pub fn cost_usd(mut self, cost: f64) -> Self {
        self.cost_usd = Some(cost);
        self
    }
}

/// Why an action is not one or more subject tokens.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAction {
    #[error("action is empty; use one or more dot-separated tokens, e.g. deploy.service")]
    Empty,
    #[error("action {0:?} has an empty token (a leading, trailing or double dot)")]
    EmptyToken(String),
    #[error("action {action:?} contains {ch:?}; wildcards, spaces and control characters are not allowed")]
    BadChar { action: String, ch: char },
}

/// Checks that `action` is one or more non-empty subject tokens without wildcards or spaces.
pub fn validate_action(action: &str) -> Result<(), InvalidAction> {
    if action.is_empty() {
        return Err(InvalidAction::Empty);
    }
    if let Some(ch) = mesh_schemas::subjects::bad_action_char(action) {
        return Err(InvalidAction::BadChar {
            action: action.to_string(),
            ch,
        });
    }
    if action.split('.').any(str::is_empty) {
        return Err(InvalidAction::EmptyToken(action.to_string()));
    }
    Ok(())
}

/// Why an intent was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The action is not a valid subject token sequence; nothing was sent.
    #[error("invalid action")]
    InvalidAction(#[from] InvalidAction),
    /// The intent id is empty or longer than 256 bytes; nothing was sent.
    #[error("intent id {0:?} is empty or longer than 256 bytes")]
    InvalidMsgId(String),
    /// The cost is negative or not a finite number; nothing was sent.
    #[error("cost {0} is not a finite, non-negative number of USD")]
    InvalidCost(f64),
    /// No stream captures the subject: the mesh is not set up on this NATS server (or under
    /// this prefix).
    #[error(
        "no stream stores {subject}; start a gateway (or `mesh-cli up`) so that the intents \
         stream exists, and check the subject prefix"
    )]
    NoStream {
        subject: String,
        #[source]
        source: PublishError,
    },
    /// The publish failed or JetStream did not acknowledge it; the intent may or may not be
    /// stored, so send it again with the same intent id.
    #[error("intent {intent_id} to {subject} was not acknowledged by JetStream; send it again with the same intent id")]
    Publish {
        subject: String,
        intent_id: String,
        #[source]
        source: PublishError,
    },
    /// JetStream's acknowledgement never came, and the client's inbox prefix is not the
    /// agent's own: in a secured mesh the PubAck goes to `_INBOX_<id>` and nowhere else, so
    /// sending again cannot help.
    #[error(
        "intent {intent_id} to {subject} got no acknowledgement, and this client's inbox prefix \
         is {prefix:?}: in a secured mesh an agent receives its PubAcks only on {want:?}; \
         connect with that inbox prefix (Agent::connect does)"
    )]
    InboxPrefix {
        subject: String,
        intent_id: String,
        prefix: String,
        want: String,
        #[source]
        source: PublishError,
    },
}

impl SendError {
    /// Whether sending again with the same intent id may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SendError::Publish { .. })
    }
}

impl Agent {
    /// Sends `payload` to `to` as `action`, with a fresh intent id, and waits until JetStream
    /// has stored it.
    pub async fn send(
        &self,
        to: &AgentId,
        action: &str,
        payload: impl Into<Bytes>,
    ) -> Result<SendReceipt, SendError> {
        self.send_with(to, action, payload, SendOptions::default())
            .await
    }

    /// Like [`Agent::send`], with an explicit intent id and/or a cost.
    pub async fn send_with(
        &self,
        to: &AgentId,
        action: &str,
        payload: impl Into<Bytes>,
        options: SendOptions,
    ) -> Result<SendReceipt, SendError> {
        validate_action(action)?;
        let intent_id = match options.msg_id {
            Some(id) if id.is_empty() || id.len() > MAX_MSG_ID_LEN => {
                return Err(SendError::InvalidMsgId(id))
            }
            Some(id) => id,
            None => nuid::next().to_string(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MSG_ID, intent_id.as_str());
        if let Some(cost) = options.cost_usd {
            if !cost.is_finite() || cost < 0.0 {
                return Err(SendError::InvalidCost(cost));
            }
            headers.insert(MESH_COST, cost.to_string().as_str());
        }
        let subject = self.subjects.intent(&self.id, to, action);
        let want = format!("_INBOX_{}", self.id);
        let wrap = |source: PublishError| {
            let inbox = self.client.new_inbox();
            let prefix = inbox.rsplit_once('.').map_or(inbox.as_str(), |(p, _)| p);
            if source.kind() == PublishErrorKind::StreamNotFound {
                SendError::NoStream {
                    subject: subject.clone(),
                    source,
                }
            } else if source.kind() == PublishErrorKind::TimedOut && prefix != want {
                SendError::InboxPrefix {
                    subject: subject.clone(),
                    intent_id: intent_id.clone(),
                    prefix: prefix.to_string(),
                    want: want.clone(),
                    source,
                }
            } else {
                SendError::Publish {
                    subject: subject.clone(),
                    intent_id: intent_id.clone(),
                    source,
                }
            }
        };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(wrap)?
            .await
            .map_err(wrap)?;
        Ok(SendReceipt {
            intent_id,
            stream_seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_one_or_more_plain_tokens() {
        for ok in ["deploy", "deploy.service", "a-b_c.D9", "x.y.z"] {
            assert_eq!(validate_action(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_action(""), Err(InvalidAction::Empty));
        for bad in [".a", "a.", "a..b", "."] {
            assert!(
                matches!(validate_action(bad), Err(InvalidAction::EmptyToken(_))),
                "{bad}"
            );
        }
        for (bad, ch) in [
            ("deploy.*", '*'),
            ("deploy.>", '>'),
            ("a b", ' '),
            ("a\tb", '\t'),
            ("a\u{7f}", '\u{7f}'),
        ] {
            assert!(
                matches!(validate_action(bad), Err(InvalidAction::BadChar { ch: c, .. }) if c == ch),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn options_build_fluently() {
        let o = SendOptions::default().msg_id("x").cost_usd(0.25);
        assert_eq!(o.msg_id.as_deref(), Some("x"));
        assert_eq!(o.cost_usd, Some(0.25));
    }
}
