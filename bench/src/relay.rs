//! The baseline: the same path as the mesh, written directly with async-nats and nothing else.
//! JetStream publish (by the senders) → one durable pull consumer → a request to the agent's
//! inbox → ack on the reply. No kill gates, no per-sender order, no per-recipient consumers, no
//! headers: what NATS itself costs for "store an intent, deliver it, get it acknowledged".
//!
//! It keeps up to [`WINDOW`] requests in flight and pulls in batches of 1,000, so that it is
//! limited by NATS and the CPU, not by round trips.
//!
//! Two variants ([`Shape`]) reproduce the gateway's use of JetStream without its logic, so that
//! the gap between the baseline and the gateway can be split into what the design costs NATS
//! and what the gateway's own code costs:
//!
//! - `per_recipient`: one durable consumer per agent (filter `bench.direct.*.<to>.>`), pinned to
//!   a priority group and pulled like the gateway pulls (`max_messages_per_batch(256)`, expires
//!   1 s, heartbeat 500 ms), instead of one consumer for all;
//! - `discovery`: also an ordered, headers-only, last-per-subject consumer over the whole stream,
//!   read and thrown away, as the gateway's recipient discovery does.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, AckKind};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use crate::traffic;

/// Requests in flight.
pub const WINDOW: usize = 1024;

/// Pull batch size.
pub const BATCH: usize = 1000;

/// The baseline's stream: file storage and limits retention, like `MESH_INTENTS`.
pub fn stream_config() -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: traffic::DIRECT_STREAM.to_string(),
        subjects: vec![format!("{}.>", traffic::DIRECT_PREFIX)],
        storage: jetstream::stream::StorageType::File,
        retention: jetstream::stream::RetentionPolicy::Limits,
        // As the gateway sets it: nats-server caps a stream at 1,000 consumers otherwise.
        max_consumers: mesh_gateway::setup::MAX_CONSUMERS,
        ..Default::default()
    }
}

/// The baseline relay's one durable consumer (it inherits the stream's replicas).
pub fn consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(traffic::DIRECT_CONSUMER.to_string()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// How the relay uses JetStream.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    /// One consumer per agent for this many agents, instead of one for all.
    pub per_recipient: Option<usize>,
    /// Also follow the stream with a discovery consumer, as the gateway does.
    pub discovery: bool,
}

type Pulled = futures::stream::BoxStream<'static, Result<jetstream::Message, String>>;

/// The relay's message source(s), merged into one stream.
async fn pull(stream: &jetstream::stream::Stream, shape: Shape) -> anyhow::Result<Pulled> {
    let Some(agents) = shape.per_recipient else {
        let consumer = stream
            .get_or_create_consumer(traffic::DIRECT_CONSUMER, consumer_config())
            .await
            .context("relay cannot get its consumer")?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await
            .context("relay cannot pull")?;
        return Ok(messages.map(|m| m.map_err(|e| e.to_string())).boxed());
    };
    let mut all = Vec::with_capacity(agents);
    for i in 0..agents {
        let to = traffic::agent(i);
        let name = format!("r_{to}");
        let consumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{}.*.{to}.>", traffic::DIRECT_PREFIX),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(15),
                    max_ack_pending: 1024,
                    max_waiting: 512,
                    priority_groups: vec!["mesh".to_string()],
                    priority_policy: consumer::PriorityPolicy::PinnedClient,
                    priority_timeout: Duration::from_secs(20),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("relay cannot create consumer {name}"))?;
        let messages = consumer
            .stream()
            .group("mesh")
            .max_messages_per_batch(256)
            .expires(Duration::from_secs(1))
            .heartbeat(Duration::from_millis(500))
            .messages()
            .await
            .with_context(|| format!("relay cannot pull {name}"))?;
        all.push(messages.map(|m| m.map_err(|e| e.to_string())).boxed());
    }
    Ok(futures::stream::select_all(all).boxed())
}

/// Follows the whole stream like the gateway's recipient discovery, and drops what it reads.
async fn discovery(stream: jetstream::stream::Stream) -> anyhow::Result<()> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", traffic::DIRECT_PREFIX),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            headers_only: true,
            ..Default::default()
        })
        .await
        .context("relay cannot create its discovery consumer")?;
    let mut messages = consumer.messages().await.context("discovery messages")?;
    while let Some(m) = messages.next().await {
        if let Err(e) = m {
            tracing::debug!(error = %e, "relay discovery reported an error");
        }
    }
    Ok(())
}

/// Relays until `stop` resolves. Prints `ready` on stdout once it pulls.
pub async fn run(url: &str, shape: Shape, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("mesh-bench relay")
        .connect(url)
        .await
        .with_context(|| format!("relay cannot connect to {url}"))?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream_config())
        .await
        .context("relay cannot get its stream")?;
    let mut messages = pull(&stream, shape).await?;
    let _discovery = if shape.discovery {
        let stream = stream.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = discovery(stream).await {
                tracing::warn!(error = %e, "relay discovery ended");
            }
        }))
    } else {
        None
    };
    println!("ready");
    let _ = std::io::stdout().flush();

    tokio::pin!(stop);
    let mut inflight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some((msg, reply)) = inflight.next(), if !inflight.is_empty() => {
                let msg: jetstream::Message = msg;
                let acked = match reply {
                    Ok(_) => msg.ack().await,
                    Err(_) => msg.ack_with(AckKind::Nak(Some(Duration::from_millis(100)))).await,
                };
                if let Err(e) = acked {
                    tracing::warn!(error = %e, "relay could not ack");
                }
            }
            next = messages.next(), if inflight.len() < WINDOW => {
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "relay pull reported an error");
                        continue;
                    }
                    None => anyhow::bail!("relay's pull subscription ended"),
                };
                let Some(to) = traffic::direct_recipient(msg.subject.as_str()) else {
                    let _ = msg.ack_with(AckKind::Term).await;
                    continue;
                };
                let inbox = traffic::inbox(to);
                let payload = msg.payload.clone();
                let client = client.clone();
                inflight.push(async move {
                    let reply = client.request(inbox, payload).await;
                    (msg, reply)
                });
            }
        }
    }
    // Let what is in flight finish, briefly; the rest is redelivered to the next relay.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((msg, reply)) = inflight.next().await {
            if reply.is_ok() {
                let _ = msg.ack().await;
            }
        }
    })
    .await;
    let _ = client.flush().await;
    Ok(())
}
