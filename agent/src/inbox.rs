//! Serving an inbox: the queue subscription on `<prefix>.agent.<me>.inbox` that the gateway
//! delivers to, and the deliveries it yields.
//!
//! Every instance of an agent subscribes with queue group `<me>`, so the instances share the
//! work: each delivery goes to one of them. A delivery is a request; replying acknowledges it
//! ([`Delivery::ack`]). A delivery that is dropped without an ack is delivered again by the
//! gateway after its request timeout, possibly to another instance.
//!
//! Only messages with the gateway's headers (`Mesh-Intent-Id`, `Mesh-From`, `Mesh-Action`,
//! `Mesh-Attempt`) and a reply subject are yielded; anything else did not come from a gateway and
//! is logged and left unanswered.

use std::sync::{Arc, Mutex};

use async_nats::{Client, HeaderMap, Subject, SubscribeError, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use mesh_schemas::headers::{MESH_ACTION, MESH_ATTEMPT, MESH_FROM, MESH_INTENT_ID};
use mesh_schemas::{AgentId, InvalidAgentId};

use crate::dedupe::{self, Claim, Recent, Seen, Shared};
use crate::{roundtrip, Agent};

/// How many acknowledged intent ids an inbox remembers by default (about 6 MiB at most).
pub const DEFAULT_DEDUPE_CAPACITY: usize = 65_536;

/// How an inbox behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// How many acknowledged intent ids to remember for deduplication; 0 turns it off.
    pub dedupe_capacity: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            dedupe_capacity: DEFAULT_DEDUPE_CAPACITY,
        }
    }
}

impl ServeOptions {
    /// Options with another dedupe capacity.
    pub fn dedupe_capacity(mut self, capacity: usize) -> Self {
        self.dedupe_capacity = capacity;
        self
    }
}

/// Why an inbox could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("could not subscribe to {subject}")]
    Subscribe {
        subject: String,
        #[source]
        source: SubscribeError,
    },
    #[error(
        "the server did not confirm the subscription to {subject}; check the connection and \
         that this user may subscribe to it"
    )]
    NotConfirmed {
        subject: String,
        #[source]
        source: roundtrip::ConfirmError,
    },
}

/// Why an acknowledgement was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    #[error("could not acknowledge intent {intent_id}; the gateway will deliver it again")]
    Publish {
        intent_id: String,
        #[source]
        source: async_nats::PublishError,
    },
    #[error("could not write the acknowledgement of intent {intent_id}; the gateway will deliver it again")]
    Flush {
        intent_id: String,
        #[source]
        source: async_nats::client::FlushError,
    },
}

impl Agent {
    /// Serves this agent's inbox with default options; see [`Agent::serve_with`].
    pub async fn serve(&self) -> Result<Inbox, ServeError> {
        self.serve_with(ServeOptions::default()).await
    }

    /// Queue-subscribes `<prefix>.agent.<me>.inbox` with queue group `<me>` and returns once the
    /// server has registered the subscription, so a delivery sent right after cannot miss it.
    pub async fn serve_with(&self, options: ServeOptions) -> Result<Inbox, ServeError> {
        let subject = self.subjects.inbox(&self.id);
        let sub = self
            .client
            .queue_subscribe(subject.clone(), self.id.to_string())
            .await
            .map_err(|source| ServeError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
        roundtrip::confirm(&self.client)
            .await
            .map_err(|source| ServeError::NotConfirmed {
                subject: subject.clone(),
                source,
            })?;
        Ok(Inbox {
            sub,
            client: self.client.clone(),
            recent: Arc::new(Mutex::new(Recent::new(options.dedupe_capacity))),
            subject,
        })
    }
}

/// The deliveries to this agent instance. Dropping it leaves the queue group.
#[derive(Debug)]
pub struct Inbox {
    /// The queue subscription on the inbox subject.
    sub: Subscriber,
    /// For re-acknowledging repeats of acknowledged intents.
    client: Client,
    /// Acknowledged and in-progress intent ids, shared with the yielded deliveries.
    recent: Shared,
    /// The inbox subject, for logs.
    subject: String,
}

impl Inbox {
    /// The next delivery that is new to this inbox, or `None` when the subscription ended
    /// (connection closed or [`Inbox::close`]).
    ///
    /// Repeats of intents acknowledged lately are acknowledged again and skipped; repeats of an
    /// intent still being handled are skipped without an answer; messages without the gateway's
    /// headers are logged and skipped. This happens while `next` is awaited: poll the inbox
    /// steadily (hand long work to a task and keep calling `next`), or repeats wait in the
    /// subscription's buffer and the gateway keeps retrying them.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let msg = self.sub.next().await?;
            let Some(reply) = msg.reply else {
                tracing::warn!(subject = %self.subject, "ignoring a message without a reply subject: not a delivery from a gateway");
                continue;
            };
            let headers = msg.headers.unwrap_or_default();
            let meta = match Meta::parse(&headers) {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::warn!(subject = %self.subject, error = %e, "ignoring a message that is not a delivery from a gateway");
                    continue;
                }
            };
            let key = (meta.from.to_string(), meta.intent_id.clone());
            let seen = dedupe::lock(&self.recent).claim(&key);
            match seen {
                Seen::New => {
                    return Some(Delivery {
                        intent_id: meta.intent_id,
                        from: meta.from,
                        action: meta.action,
                        attempt: meta.attempt,
                        payload: msg.payload,
                        headers,
                        reply,
                        client: self.client.clone(),
                        claim: Claim::new(self.recent.clone(), key),
                    })
                }
                Seen::Acked => {
                    tracing::debug!(intent_id = %meta.intent_id, from = %meta.from, attempt = meta.attempt, "re-acknowledging a repeat of an acknowledged intent");
                    if let Err(e) = self.client.publish(reply, Bytes::new()).await {
                        tracing::warn!(intent_id = %meta.intent_id, error = %e, "could not re-acknowledge a repeated intent");
                    }
                }
                Seen::InProgress => {
                    tracing::debug!(intent_id = %meta.intent_id, from = %meta.from, attempt = meta.attempt, "skipping a repeat of an intent still being handled");
                }
            }
        }
    }

    /// The inbox subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Leaves the queue group. Deliveries not yet acknowledged are delivered again by the
    /// gateway, to another instance if one serves.
    pub async fn close(mut self) {
        if let Err(e) = self.sub.unsubscribe().await {
            tracing::debug!(subject = %self.subject, error = %e, "unsubscribe failed; the connection is closing");
        }
    }
}

/// One intent delivered to this agent. Acknowledge it with [`Delivery::ack`] once it is handled.
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// The intent id (`Mesh-Intent-Id`): the same on every redelivery of the intent.
    pub intent_id: String,
    /// The sender.
    pub from: AgentId,
    /// The action, one or more tokens, e.g. `deploy.service`.
    pub action: String,
    /// Which delivery attempt this is, from 1.
    pub attempt: u32,
    /// The payload, as the sender sent it.
    pub payload: Bytes,
    /// All headers of the delivery.
    pub headers: HeaderMap,
    /// Where the acknowledgement goes.
    reply: Subject,
    /// For sending the acknowledgement.
    client: Client,
    /// Marks the intent acknowledged on ack, releases it on drop.
    claim: Claim,
}

impl Delivery {
    /// Acknowledges the delivery with an empty reply.
    pub async fn ack(self) -> Result<(), AckError> {
        self.ack_with(Bytes::new()).await
    }

    /// Acknowledges the delivery with `body` as the reply. The gateway treats any reply as an
    /// acknowledgement; the body is for tools that watch the exchange.
    ///
    /// Returns once the reply is written to the connection, so a process may exit right after.
    /// On an error the intent is not marked acknowledged; the gateway delivers it again.
    pub async fn ack_with(self, body: impl Into<Bytes>) -> Result<(), AckError> {
        let Delivery {
            intent_id,
            reply,
            client,
            claim,
            ..
        } = self;
        if let Err(source) = client.publish(reply, body.into()).await {
            return Err(AckError::Publish { intent_id, source });
        }
        if let Err(source) = client.flush().await {
            return Err(AckError::Flush { intent_id, source });
        }
        claim.acked();
        Ok(())
    }

    /// Whether the gateway delivered this intent before (to this or another instance).
    pub fn is_redelivery(&self) -> bool {
        self.attempt > 1
    }
}

/// The gateway's headers of a delivery.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    intent_id: String,
    from: AgentId,
    action: String,
    attempt: u32,
}

/// Why a message is not a delivery from a gateway.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum BadDelivery {
    #[error("header {0} is missing or empty")]
    Missing(&'static str),
    #[error("header Mesh-From is not an agent id: {0}")]
    From(InvalidAgentId),
    #[error("header Mesh-Action {0:?} is not an action")]
    Action(String),
    #[error("header Mesh-Attempt {0:?} is not a positive number")]
    Attempt(String),
}

impl Meta {
    fn parse(headers: &HeaderMap) -> Result<Meta, BadDelivery> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .map(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .ok_or(BadDelivery::Missing(name))
        };
        let intent_id = get(MESH_INTENT_ID)?.to_string();
        let from = AgentId::new(get(MESH_FROM)?).map_err(BadDelivery::From)?;
        let action = get(MESH_ACTION)?;
        crate::validate_action(action).map_err(|_| BadDelivery::Action(action.to_string()))?;
        let attempt = get(MESH_ATTEMPT)?;
        let attempt = attempt
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| BadDelivery::Attempt(attempt.to_string()))?;
        Ok(Meta {
            intent_id,
            from,
            action: action.to_string(),
            attempt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    const FULL: [(&str, &str); 4] = [
        (MESH_INTENT_ID, "i-1"),
        (MESH_FROM, "alice"),
        (MESH_ACTION, "deploy.service"),
        (MESH_ATTEMPT, "2"),
    ];

    #[test]
    fn parses_the_gateway_headers() {
        let meta = Meta::parse(&headers(&FULL)).expect("valid delivery");
        assert_eq!(meta.intent_id, "i-1");
        assert_eq!(meta.from.as_str(), "alice");
        assert_eq!(meta.action, "deploy.service");
        assert_eq!(meta.attempt, 2);
    }

    #[test]
    fn refuses_missing_or_malformed_headers() {
        for (i, name) in [MESH_INTENT_ID, MESH_FROM, MESH_ACTION, MESH_ATTEMPT]
            .into_iter()
            .enumerate()
        {
            let mut pairs = FULL.to_vec();
            pairs.remove(i);
            assert_eq!(
                Meta::parse(&headers(&pairs)),
                Err(BadDelivery::Missing(name))
            );
        }
        let bad = |name: &'static str, value: &'static str| {
            let pairs: Vec<_> = FULL
                .iter()
                .map(|(k, v)| if *k == name { (*k, value) } else { (*k, *v) })
                .collect();
            Meta::parse(&headers(&pairs))
        };
        assert!(matches!(bad(MESH_FROM, "a.b"), Err(BadDelivery::From(_))));
        assert!(matches!(
            bad(MESH_ACTION, "deploy.*"),
            Err(BadDelivery::Action(_))
        ));
        assert!(matches!(
            bad(MESH_ATTEMPT, "0"),
            Err(BadDelivery::Attempt(_))
        ));
        assert!(matches!(
            bad(MESH_ATTEMPT, "two"),
            Err(BadDelivery::Attempt(_))
        ));
        assert_eq!(
            bad(MESH_INTENT_ID, ""),
            Err(BadDelivery::Missing(MESH_INTENT_ID))
        );
    }
}

#[cfg(test)]
mod props {
    //! Property tests of the delivery headers an agent reads: what a gateway sends reads back
    //! as sent; anything else never panics, and what is accepted keeps the rules.
    use super::*;
    use mesh_schemas::subjects::bad_action_char;
    use proptest::prelude::*;

    fn headers(id: &str, from: &str, action: &str, attempt: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (MESH_INTENT_ID, id),
            (MESH_FROM, from),
            (MESH_ACTION, action),
            (MESH_ATTEMPT, attempt),
        ] {
            h.insert(k, v);
        }
        h
    }

    proptest! {
        #[test]
        fn gateway_headers_round_trip(
            id in "[!-~]{1,256}",
            from in "[A-Za-z0-9_-]{1,64}",
            action in "[a-z0-9_-]{1,8}(\\.[a-z0-9_-]{1,8}){0,3}",
            attempt in 1u32..,
        ) {
            let meta = Meta::parse(&headers(&id, &from, &action, &attempt.to_string()))
                .expect("a gateway's delivery");
            prop_assert_eq!(meta.intent_id, id);
            prop_assert_eq!(meta.from.as_str(), from.as_str());
            prop_assert_eq!(meta.action, action);
            prop_assert_eq!(meta.attempt, attempt);
        }

        #[test]
        fn what_is_accepted_keeps_the_rules(
            id in "[ -~]{0,8}",
            from in "[ -~]{0,8}",
            action in "[a-z*> .\t]{0,8}",
            attempt in "[ -~]{0,6}|-?[0-9]{1,12}",
        ) {
            if let Ok(meta) = Meta::parse(&headers(&id, &from, &action, &attempt)) {
                prop_assert!(!meta.intent_id.is_empty());
                prop_assert!(AgentId::new(meta.from.as_str()).is_ok());
                prop_assert_eq!(bad_action_char(&meta.action), None);
                prop_assert!(meta.action.split('.').all(|t| !t.is_empty()));
                prop_assert!(meta.attempt >= 1);
            }
        }
    }
}
