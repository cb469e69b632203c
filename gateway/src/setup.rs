//! Creates or checks the mesh's NATS objects: the intents and audit streams, the kill and
//! presence buckets, and one durable consumer per recipient.
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
/// stream sets a positive limit, and the mesh keeps one per recipient.
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
    #[error("could not create or update consumer {name}")]
    Consumer {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SetupError {
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
    // File storage for every bucket: a memory bucket vanishes when nats-server restarts.
    let bucket = |name: &str, description: &str, history: i64| kv::Config {
        bucket: name.to_string(),
        description: format!("Agent Mesh {description}"),
        history,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        max_value_size: 64 * 1024,
        ..Default::default()
    };
    let kill = ensure_bucket(js, bucket(&names.kill_bucket, "kill flags", 16)).await?;
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
    Ok(MeshObjects {
        intents,
        audit,
        kill,
        gateways,
        policy,
        counters,
        health,
    })
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
                // Another replica created it between our get and our create.
                Err(_) => js
                    .get_stream(&name)
                    .await
                    .map_err(|e| SetupError::stream(&name, e)),
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

/// The configuration of `to`'s inbound consumer: durable, one per recipient, pinned to one
/// replica at a time so that order per sender holds across replicas.
pub fn inbound_consumer_config(
    cfg: &GatewayConfig,
    names: &MeshNames,
    to: &AgentId,
    held: bool,
) -> Result<consumer::pull::Config, SetupError> {
    let subjects = names
        .subjects()
        .map_err(|e| SetupError::stream(&names.intents_stream, e))?;
    Ok(consumer::pull::Config {
        durable_name: Some(names.inbound_consumer(to)),
        description: Some(format!("Agent Mesh: intents to {to}")),
        filter_subject: subjects.intents_to(to),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: cfg.max_ack_pending,
        max_waiting: 512,
        priority_groups: vec![MeshNames::PRIORITY_GROUP.to_string()],
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_timeout: cfg.pin_timeout,
        pause_until: held.then(hold_until),
        ..Default::default()
    })
}

/// When a hold made now ends: effectively never.
pub fn hold_until() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + HOLD_FOR
}

/// Gets `to`'s inbound consumer, creating it (paused when `held`) if it does not exist yet.
pub async fn ensure_inbound_consumer(
    stream: &stream::Stream,
    cfg: &GatewayConfig,
    to: &AgentId,
    held: bool,
) -> Result<consumer::PullConsumer, SetupError> {
    let name = cfg.names.inbound_consumer(to);
    let config = inbound_consumer_config(cfg, &cfg.names, to, held)?;
    stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| SetupError::Consumer {
            name,
            source: Box::new(e),
        })
}

/// Pauses (holds) or resumes `to`'s inbound consumer; creates it first if needed.
pub async fn set_hold(
    stream: &stream::Stream,
    cfg: &GatewayConfig,
    to: &AgentId,
    held: bool,
) -> Result<(), SetupError> {
    let name = cfg.names.inbound_consumer(to);
    ensure_inbound_consumer(stream, cfg, to, held).await?;
    let res = if held {
        stream.pause_consumer(&name, hold_until()).await.map(|_| ())
    } else {
        stream.resume_consumer(&name).await.map(|_| ())
    };
    res.map_err(|e| SetupError::Consumer {
        name,
        source: Box::new(e),
    })
}
