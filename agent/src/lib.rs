//! Client library for Rust agents on Agent Mesh: send intents, serve an inbox, dedupe
//! redeliveries, hear about rejections and kills, and send heartbeats with cost reports.
//!
//! An agent never talks to another agent directly. It publishes intents into JetStream
//! (`<prefix>.intent.<me>.<to>.<action>`); the gateway decides whether and when each one is
//! delivered, and delivers it as a request on `<prefix>.agent.<to>.inbox`. Replying to that
//! request acknowledges the delivery; no reply means the gateway delivers it again, so delivery
//! is at-least-once and [`Inbox`] drops the repeats it can recognise by `Mesh-Intent-Id`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_agent::{Agent, NatsConnection};
//! use mesh_schemas::AgentId;
//!
//! let nats = NatsConnection {
//!     creds: Some("deployer.creds".into()),
//!     ..NatsConnection::new("tls://nats1:4222,tls://nats2:4222")
//! };
//! let me = Agent::connect(AgentId::new("deployer")?, &nats).await?;
//! let receipt = me.send(&AgentId::new("billing")?, "invoice.create", "order 7").await?;
//! println!("sent {} (stream seq {})", receipt.intent_id, receipt.stream_seq);
//!
//! let mut inbox = me.serve().await?;
//! while let Some(delivery) = inbox.next().await {
//!     println!("{} asks for {}", delivery.from, delivery.action);
//!     delivery.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Connecting
//!
//! [`Agent::connect`] connects with the shared connection options of the mesh
//! ([`NatsConnection`]: URL list, creds file, nkey seed file, user and password, token, TLS) and
//! with the inbox prefix `_INBOX_<id>`. In a secured mesh that prefix is not optional: an
//! agent's NATS permissions allow it to subscribe `_INBOX_<id>.>` and not `_INBOX.>`, so a
//! client with the default prefix never receives a reply, not even JetStream's acknowledgement
//! of its intents. A client you build yourself for [`Agent::new`] must set
//! `ConnectOptions::custom_inbox_prefix(mesh_auth::connect::agent_inbox_prefix(id))`
//! (or `async_nats::ConnectOptions::custom_inbox_prefix("_INBOX_<id>")`).
//!
//! # Heartbeats and cost
//!
//! Each instance should run [`Agent::heartbeat`]: the gateways judge the agent's health
//! (`healthy`, `degraded`, `unreachable`) from it and count how many instances are alive.
//!
//! An agent reports what it spends in one of two ways, and the gateways add the two together
//! against the cost ceilings of its policy (`max_cost_usd`, `max_cost_usd_per_day`):
//!
//! - per intent: [`SendOptions::cost_usd`] sets `Mesh-Cost` on the intent, counted before the
//!   intent is delivered (an intent that would cross a ceiling is not delivered);
//! - cumulatively: [`Heartbeat::report_cost`] adds to the total that every heartbeat carries in
//!   `Mesh-Cost-Total`, for spending that is not tied to one intent (model calls, say).
//!
//! Report each cost once, through one of the two; a cost reported both ways counts twice.
//!
//! ```no_run
//! # async fn demo(me: mesh_agent::Agent) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! let heartbeat = me.heartbeat("pod-7", Duration::from_secs(5));
//! heartbeat.report_cost(0.02)?; // a model call, say
//! // ... work ...
//! heartbeat.stop().await; // or drop it
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `lib.rs`: [`Agent`], the handle: a NATS client, the agent's id and the mesh's names;
//!   [`Agent::connect`] with the shared connection options.
//! - `send.rs`: [`Agent::send`] and [`Agent::send_with`]: a JetStream publish with an intent id,
//!   awaited until JetStream has stored it; [`SendReceipt`], [`SendOptions`], [`SendError`].
//! - `inbox.rs`: [`Agent::serve`]: the queue subscription on the inbox; [`Inbox`] yields
//!   [`Delivery`] values that are acknowledged with [`Delivery::ack`].
//! - `dedupe.rs`: the bounded memory of recently acknowledged and in-progress intent ids.
//! - `notices.rs`: [`Agent::rejections`] and [`Agent::control`]: streams of [`Rejection`] and
//!   [`ControlNotice`] for the agent.
//! - `heartbeat.rs`: [`Agent::heartbeat`]: a background task publishing `<prefix>.hb.<me>` with
//!   the instance id and the cumulative cost; [`Heartbeat`] is its handle.
//! - `roundtrip.rs`: makes sure the server has registered a new subscription before the
//!   subscribing call returns.

#![forbid(unsafe_code)]

mod dedupe;
mod heartbeat;
mod inbox;
mod notices;
mod roundtrip;

pub use roundtrip::ConfirmError;
mod send;

pub use heartbeat::{Heartbeat, InvalidCost, MAX_INSTANCE_LEN, MIN_HEARTBEAT_INTERVAL};
pub use inbox::{AckError, Delivery, Inbox, ServeError, ServeOptions, DEFAULT_DEDUPE_CAPACITY};
pub use mesh_auth::connect::{ConnectError, NatsConnection, Secret};
pub use mesh_schemas::{AgentId, ControlNotice, KillState, MeshNames};
pub use notices::{ControlNotices, NoticeError, Rejection, Rejections};
pub use send::{validate_action, InvalidAction, SendError, SendOptions, SendReceipt};

use std::time::Duration;

use mesh_auth::connect::agent_inbox_prefix;
use mesh_schemas::{SubjectError, Subjects};

/// How long [`Agent::connect`] gives each server to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One agent on the mesh: its NATS connection, its id and the mesh's names.
///
/// Cheap to clone: clones share the connection.
#[derive(Clone, Debug)]
pub struct Agent {
    /// The connection every operation uses; requests, replies and subscriptions share it.
    client: async_nats::Client,
    /// JetStream on the same connection, for publishing intents with an acknowledgement.
    js: async_nats::jetstream::Context,
    /// Who this agent is: the sender of its intents and the owner of its inbox.
    id: AgentId,
    /// The mesh's names; kept so that callers can read back what the agent was built with.
    names: MeshNames,
    /// The subject builder for `names.prefix`, validated once.
    subjects: Subjects,
}

impl Agent {
    /// An agent with the contract's default names (prefix `mesh`).
    pub fn new(client: async_nats::Client, id: AgentId) -> Self {
        let js = async_nats::jetstream::new(client.clone());
        Agent {
            client,
            js,
            id,
            names: MeshNames::default(),
            subjects: Subjects::default(),
        }
    }

    /// Connects agent `id` with `connection` and the inbox prefix `_INBOX_<id>` that its NATS
    /// permissions allow, trying each listed server once ([`CONNECT_TIMEOUT`] each); once
    /// connected, the client reconnects on its own. The agent has the default names; see
    /// [`Agent::with_names`].
    ///
    /// Fails with [`ConnectError::Settings`] when a file is missing or the settings conflict,
    /// [`ConnectError::Auth`] when the server refuses the credentials, [`ConnectError::Tls`],
    /// [`ConnectError::Unreachable`] or [`ConnectError::Timeout`].
    pub async fn connect(id: AgentId, connection: &NatsConnection) -> Result<Self, ConnectError> {
        let client = connection
            .connect(
                format!("mesh-agent {id}"),
                &agent_inbox_prefix(id.as_str()),
                CONNECT_TIMEOUT,
            )
            .await?;
        Ok(Agent::new(client, id))
    }

    /// The same agent on a mesh with other names (e.g. another subject prefix).
    ///
    /// Fails when `names.prefix` is not a valid subject prefix.
    pub fn with_names(mut self, names: MeshNames) -> Result<Self, SubjectError> {
        self.subjects = names.subjects()?;
        self.names = names;
        Ok(self)
    }

    /// This agent's id.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// The mesh's names this agent uses.
    pub fn names(&self) -> &MeshNames {
        &self.names
    }

    /// The subject builder for this agent's mesh.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}
