//! Creates or checks the mesh's NATS objects: the intents and audit streams, the buckets, the
//! shared delivery consumer, and the consumers of parked recipients.
//!
//! An object that exists with an incompatible configuration is an error naming the field, never
//! a silent change: a team bolting the mesh onto an existing cluster must decide that itself.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use mesh_schemas::{AgentId, MeshNames};

use crate::config::GatewayConfig;

/// How long a held (paused) consumer stays paused: "until resumed", in practice.
pub const HOLD_FOR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Consumers per intents stream. nats-server 2.15 caps a stream at 1,000 consumers unless the
/// stream sets a positive limit, and the mesh keeps one per parked recipient.
pub const MAX_CONSUMERS: i32 = 100_000;

/// Handles to the mesh's objects.
#[derive(Clone, Debug)]
pub struct MeshObjects {
    pub intents: stream::Stream,
    pub audit: stream::Stream,
    pub kill: kv::Store,
    pub gateways: kv::Store,
    pub policy: kv::Store,
    pub counters: kv::Store,
    pub health: kv::Store,
    /// Agents seen on the data path (`mesh-activity`), for `mesh-cli status`.
    pub activity: kv::Store,
}

/// A NATS object could not be created or has an incompatible configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("could not create or read stream {name}")]
    Stream {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "stream {name} exists with {field} = {found}, but the mesh needs {expected}; \
         change or delete the stream, or configure other names (names.*)"
    )]
    Incompatible {
        name: String,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("could not create or read KV bucket {name}")]
    Bucket {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("could not create or update consumer {name}: {source}")]
    Consumer {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SetupError {
    /// Whether trying again can help: a request that timed out or found no JetStream leader
    /// (a cluster electing, a quorum of its nodes down) can; an object with an incompatible
    /// configuration cannot.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SetupError::Incompatible { .. })
    }

    /// The error with its causes, `a: b: c`, for a log line.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }

    fn stream(name: &str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        SetupError::Stream {
            name: name.to_string(),
            source: Box::new(e),
        }
    }
    fn bucket(name: &str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        SetupError::Bucket {
            name: name.to_string(),
            source: Box::new(e),
        }
    }
}

/// Creates the mesh's streams and buckets, or checks those that exist.
pub async fn ensure(
    js: &jetstream::Context,
    cfg: &GatewayConfig,
) -> Result<MeshObjects, SetupError> {
    let names = &cfg.names;
    let subjects = names
        .subjects()
        .map_err(|e| SetupError::stream(&names.intents_stream, e))?;
    let intents = ensure_stream(
        js,
        stream::Config {
            name: names.intents_stream.clone(),
            description: Some("Agent Mesh intents: one message per intent".to_string()),
            subjects: vec![subjects.intent_stream_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: cfg.replicas,
            max_message_size: i32::try_from(cfg.max_payload).unwrap_or(i32::MAX),
            max_consumers: MAX_CONSUMERS,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await?;
    let audit = ensure_stream(
        js,
        stream::Config {
            name: names.audit_stream.clone(),
            description: Some("Agent Mesh audit trail".to_string()),
            subjects: vec![subjects.audit_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: cfg.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await?;
    let bucket = |name: &str, description: &str, history: i64| {
        bucket_config(cfg, name, description, history)
    };
    let kill = ensure_kill_bucket(js, cfg).await?;
    let gateways = ensure_bucket(
        js,
        kv::Config {
            max_age: Duration::from_secs(60),
            ..bucket(&names.gateways_bucket, "gateway replicas (presence)", 1)
        },
    )
    .await?;
    let policy = ensure_bucket(
        js,
        bucket(
            &names.policy_bucket,
            "policies (per agent and _default)",
            16,
        ),
    )
    .await?;
    let counters = ensure_bucket(
        js,
        bucket(
            &names.counters_bucket,
            "policy counters (intents per window, cost)",
            1,
        ),
    )
    .await?;
    let health = ensure_bucket(
        js,
        bucket(&names.health_bucket, "agent health (from heartbeats)", 1),
    )
    .await?;
    let activity = ensure_bucket(
        js,
        bucket(&names.activity_bucket, "agents seen on the data path", 1),
    )
    .await?;
    Ok(MeshObjects {
        intents,
        audit,
        kill,
        gateways,
        policy,
        counters,
        health,
        activity,
    })
}

/// First wait between two attempts of [`ensure_ready`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between two attempts of [`ensure_ready`].
const RETRY_MAX: Duration = Duration::from_secs(5);

/// [`ensure`], retried with backoff (250 ms doubling to 5 s) for as long as it takes, logging
/// each failure and why: a gateway started with its cluster (compose, Kubernetes) finds no
/// JetStream leader until the nodes have elected one, and requests time out meanwhile. Returns
/// at once on an error that retrying cannot fix (an incompatible stream).
pub async fn ensure_ready(
    js: &jetstream::Context,
    cfg: &GatewayConfig,
) -> Result<MeshObjects, SetupError> {
    let mut wait = RETRY_FIRST;
    let mut attempt: u32 = 1;
    loop {
        match ensure(js, cfg).await {
            Ok(objects) => {
                if attempt > 1 {
                    tracing::info!(
                        attempts = attempt,
                        "the mesh's streams and buckets are ready"
                    );
                }
                return Ok(objects);
            }
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                tracing::warn!(
                    attempt,
                    retry_in = ?wait,
                    error = %e.chain(),
                    "JetStream is not ready (a cluster still electing, or too few nodes up); \
                     nothing is delivered until it is"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// A bucket's configuration. File storage for every bucket: a memory bucket vanishes when
/// nats-server restarts.
fn bucket_config(cfg: &GatewayConfig, name: &str, description: &str, history: i64) -> kv::Config {
    kv::Config {
        bucket: name.to_string(),
        description: format!("Agent Mesh {description}"),
        history,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        max_value_size: 64 * 1024,
        ..Default::default()
    }
}

/// Creates the kill-flag bucket, or opens it: all that `mesh-cli kill` needs before it can
/// write the flag.
pub async fn ensure_kill_bucket(
    js: &jetstream::Context,
    cfg: &GatewayConfig,
) -> Result<kv::Store, SetupError> {
    ensure_bucket(
        js,
        bucket_config(cfg, &cfg.names.kill_bucket, "kill flags", 16),
    )
    .await
}

async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<stream::Stream, SetupError> {
    match js.get_stream(&want.name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| SetupError::stream(&want.name, e))?;
            check_compatible(&info.config, &want)?;
            Ok(existing)
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            let name = want.name.clone();
            match js.create_stream(want.clone()).await {
                Ok(s) => Ok(s),
                // Another replica created it between our get and our create; if it is not
                // there either, the create's own error says why (a timeout, no leader, limits).
                Err(create) => js
                    .get_stream(&name)
                    .await
                    .map_err(|_| SetupError::stream(&name, create)),
            }
        }
        Err(e) => Err(SetupError::stream(&want.name, e)),
    }
}

fn check_compatible(found: &stream::Config, want: &stream::Config) -> Result<(), SetupError> {
    let incompatible = |field, found: String, expected: String| SetupError::Incompatible {
        name: want.name.clone(),
        field,
        found,
        expected,
    };
    if found.subjects != want.subjects {
        return Err(incompatible(
            "subjects",
            format!("{:?}", found.subjects),
            format!("{:?}", want.subjects),
        ));
    }
    if found.retention != want.retention {
        return Err(incompatible(
            "retention",
            format!("{:?}", found.retention),
            format!("{:?}", want.retention),
        ));
    }
    if found.max_consumers > 0 && found.max_consumers < 1000 {
        return Err(incompatible(
            "max_consumers",
            found.max_consumers.to_string(),
            "at least one per agent (the mesh creates it with 100000)".to_string(),
        ));
    }
    Ok(())
}

async fn ensure_bucket(js: &jetstream::Context, want: kv::Config) -> Result<kv::Store, SetupError> {
    match js.get_key_value(&want.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => {
            let name = want.bucket.clone();
            match js.create_key_value(want).await {
                Ok(store) => Ok(store),
                Err(e) => js
                    .get_key_value(&name)
                    .await
                    .map_err(|_| SetupError::bucket(&name, e)),
            }
        }
    }
}

/// The shared delivery consumer: durable, over the whole intents stream, pinned to one replica
/// at a time (the active one), so that stream order, and with it order per sender, holds across
/// replicas. Recipients that are not parked get their intents through it.
pub fn delivery_consumer_config(cfg: &GatewayConfig) -> Result<consumer::pull::Config, SetupError> {
    let subjects = cfg
        .names
        .subjects()
        .map_err(|e| SetupError::stream(&cfg.names.intents_stream, e))?;
    Ok(consumer::pull::Config {
        durable_name: Some(cfg.names.delivery_consumer()),
        description: Some("Agent Mesh: intents of every recipient that is not parked".to_string()),
        filter_subject: subjects.intent_stream_filter(),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: cfg.delivery_max_ack_pending,
        max_waiting: 512,
        priority_groups: vec![MeshNames::PRIORITY_GROUP.to_string()],
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_timeout: cfg.pin_timeout,
        ..Default::default()
    })
}

/// Gets the shared delivery consumer, creating it if it does not exist yet.
pub async fn ensure_delivery_consumer(
    stream: &stream::Stream,
    cfg: &GatewayConfig,
) -> Result<consumer::PullConsumer, SetupError> {
    let name = cfg.names.delivery_consumer();
    let config = delivery_consumer_config(cfg)?;
    stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| SetupError::Consumer {
            name,
            source: Box::new(e),
        })
}

/// Consumer metadata key: stream sequences at or after the consumer's start that the shared
/// lane had delivered already when it parked the recipient (comma separated).
pub const SKIP_METADATA: &str = "mesh.skip";

/// The configuration of a parked recipient's consumer: durable, from the first intent the shared
/// lane had not delivered, pinned to one replica at a time, paused while the recipient is killed.
pub fn parked_consumer_config(
    cfg: &GatewayConfig,
    to: &AgentId,
    start: u64,
    skip: &[u64],
    held: bool,
) -> Result<consumer::pull::Config, SetupError> {
    let names = &cfg.names;
    let subjects = names
        .subjects()
        .map_err(|e| SetupError::stream(&names.intents_stream, e))?;
    let mut metadata = std::collections::HashMap::new();
    if !skip.is_empty() {
        let list: Vec<String> = skip.iter().map(u64::to_string).collect();
        metadata.insert(SKIP_METADATA.to_string(), list.join(","));
    }
    Ok(consumer::pull::Config {
        durable_name: Some(names.inbound_consumer(to)),
        description: Some(format!("Agent Mesh: intents to {to} (parked)")),
        filter_subject: subjects.intents_to(to),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start.max(1),
        },
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: cfg.max_ack_pending,
        max_waiting: 512,
        priority_groups: vec![MeshNames::PRIORITY_GROUP.to_string()],
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_timeout: cfg.pin_timeout,
        pause_until: held.then(hold_until),
        metadata,
        ..Default::default()
    })
}

/// The skip list stored with a parked consumer.
pub fn skip_list(info: &consumer::Info) -> std::collections::HashSet<u64> {
    info.config
        .metadata
        .get(SKIP_METADATA)
        .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_default()
}

/// When a hold made now ends: effectively never.
pub fn hold_until() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + HOLD_FOR
}

fn consumer_error(name: &str, e: impl std::error::Error + Send + Sync + 'static) -> SetupError {
    SetupError::Consumer {
        name: name.to_string(),
        source: Box::new(e),
    }
}

/// Creates `to`'s parked consumer from `start`. One that exists already (left by a replica that
/// parked `to` and lost its place before it could record it) is replaced by one that starts at
/// the earlier of the two unacknowledged positions, so that nothing it still held is lost.
pub async fn create_parked_consumer(
    stream: &stream::Stream,
    cfg: &GatewayConfig,
    to: &AgentId,
    start: u64,
    skip: &[u64],
    held: bool,
) -> Result<(), SetupError> {
    let name = cfg.names.inbound_consumer(to);
    let mut start = start;
    match stream.consumer_info(&name).await {
        Ok(info) => {
            // Its first unacknowledged intent: a consumer that starts at a sequence reports a
            // floor of 0 until its first ack, and taken as is that replaced a parked consumer
            // with one from the stream's first intent (seen in the chaos soak: thousands of old
            // intents delivered again, some rejected, after a park retried across a timeout).
            start = start.min(first_unacked(&info));
            match stream.delete_consumer(&name).await {
                Ok(_) => {}
                // Deleted meanwhile (an unpark): what we wanted.
                Err(e) if hold_failure(&e) == HoldFailure::Gone => {}
                Err(e) => return Err(consumer_error(&name, e)),
            }
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(consumer_error(&name, e)),
    }
    let config = parked_consumer_config(cfg, to, start, skip, held)?;
    stream
        .create_consumer(config)
        .await
        .map(|_| ())
        .map_err(|e| consumer_error(&name, e))
}

/// The first stream sequence `info`'s consumer has not acknowledged: after its ack floor, and
/// not before the sequence it starts at.
pub fn first_unacked(info: &consumer::Info) -> u64 {
    let start = match info.config.deliver_policy {
        consumer::DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
        _ => 1,
    };
    (info.ack_floor.stream_sequence + 1).max(start)
}

/// Gets `to`'s parked consumer; `None` when `to` is not parked.
pub async fn parked_consumer(
    stream: &stream::Stream,
    cfg: &GatewayConfig,
    to: &AgentId,
) -> Result<Option<(consumer::PullConsumer, consumer::Info)>, SetupError> {
    let name = cfg.names.inbound_consumer(to);
    let info = match stream.consumer_info(&name).await {
        Ok(info) => info,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(consumer_error(&name, e)),
    };
    match stream.get_consumer::<consumer::pull::Config>(&name).await {
        Ok(c) => Ok(Some((c, info))),
        Err(source) => Err(SetupError::Consumer { name, source }),
    }
}

/// Whether a consumer request failed because the consumer does not exist.
pub fn is_not_found(e: &jetstream::context::ConsumerInfoError) -> bool {
    match e.kind() {
        jetstream::context::ConsumerInfoErrorKind::NotFound => true,
        jetstream::context::ConsumerInfoErrorKind::JetStream(j) => {
            j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
        }
        _ => false,
    }
}

/// The recipients parked right now: those with a consumer of their own.
pub async fn parked_recipients(
    stream: &stream::Stream,
    names: &MeshNames,
) -> Result<std::collections::HashSet<AgentId>, SetupError> {
    use futures::TryStreamExt;
    let all: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| consumer_error(&names.intents_stream, e))?;
    Ok(all
        .iter()
        .filter_map(|n| n.strip_prefix(MeshNames::INBOUND_PREFIX))
        .filter_map(|id| AgentId::new(id).ok())
        .collect())
}

/// Pauses (holds) or resumes `to`'s parked consumer, if `to` is parked. The kill flag itself
/// is what stops deliveries; the pause keeps a parked consumer quiet in NATS as well.
///
/// The consumer can be deleted while this runs: the shared lane unparks `to` (deletes
/// `in_<id>`) or parks it again (replaces `in_<id>`) at any time. nats-server looks the
/// consumer up and then rewrites its configuration; a delete in between fails the request with
/// "error creating store for consumer: consumer does not exist" (code 10104) instead of "not
/// found". So a failure that may mean "gone" is settled by reading the consumer again: gone
/// means there is nothing to hold (the lane creates the next one with the gate's state), still
/// there (or there again) means the pause or resume is repeated, which is idempotent.
pub async fn set_hold(
    stream: &stream::Stream,
    cfg: &GatewayConfig,
    to: &AgentId,
    held: bool,
) -> Result<(), SetupError> {
    let name = cfg.names.inbound_consumer(to);
    let mut attempt = 0u32;
    loop {
        let res = if held {
            stream.pause_consumer(&name, hold_until()).await.map(|_| ())
        } else {
            stream.resume_consumer(&name).await.map(|_| ())
        };
        let e = match res {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match hold_failure(&e) {
            HoldFailure::Gone => return Ok(()),
            HoldFailure::Other => return Err(consumer_error(&name, e)),
            HoldFailure::MaybeGone => {}
        }
        match stream.consumer_info(&name).await {
            Err(info_err) if is_not_found(&info_err) => return Ok(()),
            _ if attempt >= HOLD_RACE_ATTEMPTS => return Err(consumer_error(&name, e)),
            _ => {}
        }
        attempt += 1;
        tracing::debug!(%to, held, attempt, error = %e, "consumer changed under a pause or resume; trying again");
        tokio::time::sleep(Duration::from_millis(5) * attempt).await;
    }
}

/// How often [`set_hold`] repeats a pause or resume that met a consumer being replaced. One
/// repeat settles a delete; more cover a park and an unpark landing back to back.
const HOLD_RACE_ATTEMPTS: u32 = 10;

/// What a failed pause or resume says about the consumer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HoldFailure {
    /// It does not exist.
    Gone,
    /// It was removed while the server updated it (or its store failed): read it again.
    MaybeGone,
    /// Anything else (a timeout, no leader): the caller decides whether to retry.
    Other,
}

/// Sorts a failed request on `in_<id>` (pause, resume, delete) by what it says about the
/// consumer.
pub(crate) fn hold_failure(e: &jetstream::stream::ConsumerError) -> HoldFailure {
    use jetstream::stream::ConsumerErrorKind;
    let ConsumerErrorKind::JetStream(j) = e.kind() else {
        return HoldFailure::Other;
    };
    match j.error_code() {
        jetstream::ErrorCode::CONSUMER_NOT_FOUND => HoldFailure::Gone,
        CONSUMER_STORE_FAILED | CONSUMER_DOES_NOT_EXIST => HoldFailure::MaybeGone,
        _ => HoldFailure::Other,
    }
}

/// nats-server `JSConsumerStoreFailedErrF`: the consumer's store could not be written, which
/// is how a pause or resume of a consumer deleted meanwhile fails.
const CONSUMER_STORE_FAILED: jetstream::ErrorCode = jetstream::ErrorCode(10104);
/// nats-server `JSConsumerDoesNotExist` (code 10149), the cause inside the above.
const CONSUMER_DOES_NOT_EXIST: jetstream::ErrorCode = jetstream::ErrorCode(10149);

/// Intents waiting for `to`: those its parked consumer holds (undelivered or unacknowledged),
/// or, when it is not parked, those after the shared lane's ack floor. Counted with a
/// short-lived consumer, so it costs a few requests; for operators, not for the data path.
pub async fn pending_for(
    stream: &stream::Stream,
    cfg: &GatewayConfig,
    to: &AgentId,
) -> Result<u64, SetupError> {
    let parked = cfg.names.inbound_consumer(to);
    match stream.consumer_info(&parked).await {
        Ok(info) => return Ok(info.num_pending + info.num_ack_pending as u64),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(consumer_error(&parked, e)),
    }
    let shared = cfg.names.delivery_consumer();
    let floor = match stream.consumer_info(&shared).await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(e) if is_not_found(&e) => 0,
        Err(e) => return Err(consumer_error(&shared, e)),
    };
    let subjects = cfg
        .names
        .subjects()
        .map_err(|e| SetupError::stream(&cfg.names.intents_stream, e))?;
    let mut counter = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subjects.intents_to(to),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            },
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| consumer_error("pending counter", e))?;
    let pending = counter
        .info()
        .await
        .map_err(|e| consumer_error("pending counter", e))?
        .num_pending;
    let name = counter.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(pending)
}
