//! Gateway configuration: compiled-in defaults, then a TOML file, then `MESH_*` environment
//! variables, then flags. Parsed raw with unknown fields rejected, then validated, so that a typo
//! is an error that names the field instead of a silently ignored setting.
//!
//! The NATS connection fields (`nats_url`, `nats_creds`, ..., `nats_tls_key`) are flat, so
//! that `MESH_NATS_TOKEN` and friends work; they are the fields of
//! [`mesh_auth::connect::NatsConnection`] with a `nats_` prefix, and [`NatsFlags`] are their
//! flags, shared with mesh-cli.

mod flags;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_auth::connect::{ConnectionError, NatsConnection, Secret};
use mesh_schemas::{MeshNames, Subjects};
use serde::{Deserialize, Serialize};

pub use flags::NatsFlags;

/// The commented default configuration, also what `mesh-gateway --print-config` shows.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default-config.toml");

/// Everything a gateway replica needs to run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// NATS server URL(s), comma separated; list every node of a cluster.
    pub nats_url: String,
    /// NATS credentials file (user JWT and nkey seed).
    pub nats_creds: Option<PathBuf>,
    /// File holding a user nkey seed (`SU...`), for servers that list nkey users.
    pub nats_nkey: Option<PathBuf>,
    /// NATS user, with `nats_password`.
    pub nats_user: Option<String>,
    /// Password of `nats_user`; never shown in logs or `Debug`.
    pub nats_password: Option<Secret>,
    /// NATS authentication token; never shown in logs or `Debug`.
    pub nats_token: Option<Secret>,
    /// PEM file of the CA that signed the server's certificate (turns TLS on).
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (turns TLS on).
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of `nats_tls_cert`.
    pub nats_tls_key: Option<PathBuf>,
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
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (e.g. `0.0.0.0:9464`); off when unset.
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            nats_url: mesh_auth::connect::DEFAULT_URL.to_string(),
            nats_creds: None,
            nats_nkey: None,
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
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
            metrics_addr: None,
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
    #[error("invalid configuration: {0}")]
    Connection(#[from] ConnectionError),
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
        self.connection().check()?;
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

    /// The NATS connection settings.
    pub fn connection(&self) -> NatsConnection {
        NatsConnection {
            url: self.nats_url.clone(),
            creds: self.nats_creds.clone(),
            nkey: self.nats_nkey.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
        }
    }

    /// Replaces the NATS connection settings.
    pub fn set_connection(&mut self, c: NatsConnection) {
        self.nats_url = c.url;
        self.nats_creds = c.creds;
        self.nats_nkey = c.nkey;
        self.nats_user = c.user;
        self.nats_password = c.password;
        self.nats_token = c.token;
        self.nats_tls_ca = c.tls_ca;
        self.nats_tls_cert = c.tls_cert;
        self.nats_tls_key = c.tls_key;
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
    "MESH_CONSOLE_ADDR",
    "MESH_CONSOLE_TOKEN",
    "MESH_CONSOLE_OPEN_READS",
    "MESH_NATS_JS_DOMAIN",
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
    fn connection_settings_come_from_the_environment() {
        let cfg = GatewayConfig::load(
            None,
            env(&[
                ("MESH_NATS_URL", "tls://a:4222, tls://b:4222"),
                ("MESH_NATS_TOKEN", "12345"),
                ("MESH_NATS_TLS_CA", "/etc/mesh/ca.pem"),
                ("MESH_NATS_TLS_CERT", "/etc/mesh/gw.pem"),
                ("MESH_NATS_TLS_KEY", "/etc/mesh/gw-key.pem"),
            ]),
        )
        .expect("loads");
        let c = cfg.connection();
        assert_eq!(c.url, "tls://a:4222, tls://b:4222");
        assert_eq!(c.token, Some(Secret::new("12345")));
        assert_eq!(c.tls_ca, Some(PathBuf::from("/etc/mesh/ca.pem")));
        assert_eq!(c.tls_cert, Some(PathBuf::from("/etc/mesh/gw.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/etc/mesh/gw-key.pem")));
        assert!(
            !format!("{cfg:?}").contains("12345"),
            "Debug shows the token"
        );

        let cfg = GatewayConfig::load(
            None,
            env(&[
                ("MESH_NATS_USER", "gw"),
                ("MESH_NATS_PASSWORD", "pw"),
                ("MESH_NATS_NKEY", "/etc/mesh/gw.nk"),
            ]),
        )
        .expect_err("two ways to authenticate");
        assert!(
            matches!(
                cfg,
                ConfigError::Connection(ConnectionError::Conflict { .. })
            ),
            "{cfg:?}"
        );

        let mut cfg = GatewayConfig::default();
        let mut c = cfg.connection();
        c.creds = Some("/etc/mesh/gw.creds".into());
        cfg.set_connection(c.clone());
        assert_eq!(cfg.nats_creds, Some(PathBuf::from("/etc/mesh/gw.creds")));
        assert_eq!(cfg.connection(), c);
    }

    #[test]
    fn metrics_addr_is_off_by_default_and_set_by_the_environment() {
        assert_eq!(GatewayConfig::default().metrics_addr, None);
        let cfg = GatewayConfig::load(None, env(&[("MESH_METRICS_ADDR", "127.0.0.1:9464")]))
            .expect("loads");
        assert_eq!(
            cfg.metrics_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
    }

    #[test]
    fn a_comma_separated_url_list_is_valid() {
        let cfg = GatewayConfig::load(
            None,
            env(&[("MESH_NATS_URL", "nats://a:4222,nats://a:4222")]),
        )
        .expect("a list loads");
        assert_eq!(cfg.connection().check().expect("checks").len(), 2);
        let err = GatewayConfig::load(None, env(&[("MESH_NATS_URL", "nats://a:x,nats://b:1")]))
            .expect_err("bad port");
        assert!(
            matches!(err, ConfigError::Connection(ConnectionError::BadUrl { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn the_deploy_example_loads_with_its_three_urls() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway/gateway.toml");
        let cfg = GatewayConfig::load(Some(&file), HashMap::new()).expect("loads");
        assert_eq!(cfg.connection().check().expect("a list").len(), 3);
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
