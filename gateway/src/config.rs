//! Gateway configuration: compiled-in defaults, then a TOML file, then `MESH_*` environment
//! variables, then flags. Parsed raw with unknown fields rejected, then validated, so that a typo
//! is an error that names the field instead of a silently ignored setting.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use mesh_schemas::{MeshNames, Subjects};
use serde::{Deserialize, Serialize};

/// The commented default configuration, also what `mesh-gateway --print-config` shows.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default-config.toml");

/// Everything a gateway replica needs to run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// Optional NATS credentials file.
    pub nats_creds: Option<String>,
    /// This replica's id; defaults to `<host>-<pid>`. Must be unique among live replicas.
    pub gateway_id: Option<String>,
    /// Stream, bucket and subject names.
    pub names: MeshNames,
    /// Replicas of the streams and buckets the gateway creates (1 single node, 3 cluster).
    pub replicas: usize,
    /// Largest accepted intent payload, in bytes; enforced by the stream itself.
    pub max_payload: usize,
    /// How long the gateway waits for an agent's reply before it retries the delivery.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// JetStream ack wait of recipient consumers; held deliveries are kept alive with progress
    /// acks, so this only bounds how long a crashed replica's work stays invisible.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacknowledged intents per parked recipient's consumer (shared by all replicas).
    pub max_ack_pending: i64,
    /// Deliveries in flight per parked recipient in this replica (across its senders).
    pub max_inflight_per_recipient: usize,
    /// Unacknowledged intents of the shared delivery consumer: how much work the active replica
    /// may hold in memory (queued behind the delivery in flight of the same sender).
    pub delivery_max_ack_pending: i64,
    /// Queued intents for one recipient after which the shared lane parks it on its own
    /// consumer, so that a slow recipient never holds the shared lane's memory.
    pub park_backlog: usize,
    /// How often a replica refreshes its presence record.
    #[serde(with = "humantime_serde")]
    pub presence_interval: Duration,
    /// How long a recipient stays pinned to a replica that stopped pulling before another
    /// replica takes it over.
    #[serde(with = "humantime_serde")]
    pub pin_timeout: Duration,
    /// On shutdown: how long in-flight deliveries may take before they are handed back.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Longest wait between retries of a delivery that found no responder or timed out.
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            nats_url: "nats://127.0.0.1:4222".to_string(),
            nats_creds: None,
            gateway_id: None,
            names: MeshNames::default(),
            replicas: 1,
            max_payload: 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(15),
            max_ack_pending: 1024,
            max_inflight_per_recipient: 256,
            delivery_max_ack_pending: 20_000,
            park_backlog: 1_000,
            presence_interval: Duration::from_secs(1),
            pin_timeout: Duration::from_secs(20),
            drain_grace: Duration::from_secs(10),
            max_retry_backoff: Duration::from_secs(2),
        }
    }
}

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: `{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl GatewayConfig {
    /// Loads defaults, then `file` (TOML) if given, then `env` (`MESH_*` variables; `__`
    /// separates nested fields, e.g. `MESH_NAMES__PREFIX`). The environment is passed in rather
    /// than read here so that tests never touch the process environment.
    pub fn load(file: Option<&Path>, env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_CONFIG_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("MESH_") && !CLI_ONLY_ENV.contains(&k.as_str()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("MESH")
                .prefix_separator("_")
                .separator("__")
                .source(Some(env)),
        );
        let cfg: GatewayConfig = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde cannot: ranges, names, the prefix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| ConfigError::Invalid {
            field,
            problem: problem.to_string(),
        };
        Subjects::new(self.names.prefix.clone())
            .map_err(|e| invalid("names.prefix", &e.to_string()))?;
        if self.nats_url.trim().is_empty() {
            return Err(invalid("nats_url", "is empty"));
        }
        if !matches!(self.replicas, 1..=5) {
            return Err(invalid("replicas", "must be 1 to 5 (3 for a cluster)"));
        }
        if self.max_payload == 0 || self.max_payload > 64 * 1024 * 1024 {
            return Err(invalid("max_payload", "must be 1 byte to 64 MiB"));
        }
        if self.max_ack_pending < 1 {
            return Err(invalid("max_ack_pending", "must be at least 1"));
        }
        if self.delivery_max_ack_pending < 1 {
            return Err(invalid("delivery_max_ack_pending", "must be at least 1"));
        }
        if self.park_backlog == 0 {
            return Err(invalid("park_backlog", "must be at least 1"));
        }
        if self.max_inflight_per_recipient == 0 {
            return Err(invalid("max_inflight_per_recipient", "must be at least 1"));
        }
        for (field, d) in [
            ("request_timeout", self.request_timeout),
            ("ack_wait", self.ack_wait),
            ("presence_interval", self.presence_interval),
            ("pin_timeout", self.pin_timeout),
            ("max_retry_backoff", self.max_retry_backoff),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be longer than zero"));
            }
        }
        if self.ack_wait <= self.request_timeout {
            return Err(invalid(
                "ack_wait",
                "must be longer than request_timeout, or JetStream redelivers while a request is in flight",
            ));
        }
        if self.pin_timeout <= self.ack_wait {
            return Err(invalid(
                "pin_timeout",
                "must be longer than ack_wait, or a replica taking over overtakes the intents a dead one left unacknowledged",
            ));
        }
        if let Some(id) = &self.gateway_id {
            mesh_schemas::AgentId::new(id.clone())
                .map_err(|e| invalid("gateway_id", &e.to_string()))?;
        }
        Ok(())
    }

    /// This replica's id: the configured one, or `<host>-<pid>`.
    pub fn gateway_id(&self) -> String {
        self.gateway_id.clone().unwrap_or_else(|| {
            let host = hostname();
            let clean: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(40)
                .collect();
            format!("{clean}-{}", std::process::id())
        })
    }
}

/// `MESH_*` variables that belong to mesh-cli, not to the gateway.
/// Also the test harness's and mesh-cli's own variables.
const CLI_ONLY_ENV: &[&str] = &[
    "MESH_CONFIG",
    "MESH_JSON",
    "MESH_LOG",
    "MESH_NATS_SERVER",
    "MESH_NATS_VERSION",
    "MESH_FENCE_TIMEOUT",
    "MESH_AUTH_DIR",
];

/// The machine's host name, for replica ids and presence records.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "gateway".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_compiled_in_file() {
        let cfg = GatewayConfig::load(None, HashMap::new()).expect("defaults load");
        assert_eq!(cfg, GatewayConfig::default());
    }

    #[test]
    fn environment_overrides_defaults() {
        let cfg = GatewayConfig::load(
            None,
            env(&[
                ("MESH_NATS_URL", "nats://10.0.0.1:4222"),
                ("MESH_REQUEST_TIMEOUT", "2s"),
                ("MESH_NAMES__PREFIX", "team"),
            ]),
        )
        .expect("loads");
        assert_eq!(cfg.nats_url, "nats://10.0.0.1:4222");
        assert_eq!(cfg.request_timeout, Duration::from_secs(2));
        assert_eq!(cfg.names.prefix, "team");
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let dir = std::env::temp_dir().join(format!("mesh-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("gw.toml");
        std::fs::write(&file, "nats_urll = \"x\"\n").expect("write");
        let err = GatewayConfig::load(Some(&file), HashMap::new()).expect_err("typo refused");
        assert!(matches!(err, ConfigError::Load(_)));
        assert!(err.to_string().contains("nats_urll"), "{err}");

        let err = GatewayConfig::load(None, env(&[("MESH_NAMES__PREFIX", "a.*")]))
            .expect_err("wildcard prefix refused");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "names.prefix",
                ..
            }
        ));

        let err = GatewayConfig::load(None, env(&[("MESH_ACK_WAIT", "1s")]))
            .expect_err("ack wait below request timeout refused");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "ack_wait",
                ..
            }
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
