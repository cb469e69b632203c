//! mesh-cli configuration: compiled-in defaults, then a TOML file (`--config FILE` or
//! `MESH_CONFIG`), then `MESH_*` environment variables, then flags. Parsed raw with unknown
//! fields refused, then validated, so that a typo is an error naming the field.
//!
//! The variable names are the gateway's (`MESH_NATS_URL`, `MESH_NAMES__PREFIX`, ...), so one
//! environment can configure both. Variables that only the gateway reads (`MESH_ACK_WAIT`, ...)
//! and those that are not configuration (`MESH_CONFIG`, `MESH_JSON`, `MESH_LOG`,
//! `MESH_NATS_SERVER`, `MESH_NATS_VERSION`) are left out here; any other unknown `MESH_*`
//! variable is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_auth::connect::{ConnectionError, NatsConnection, Secret};
use mesh_gateway::config::NatsFlags;
use mesh_gateway::GatewayConfig;
use mesh_schemas::{MeshNames, Subjects};
use serde::{Deserialize, Serialize};

/// The commented default configuration, compiled in.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default-config.toml");

/// `MESH_*` variables that are not configuration fields of mesh-cli or of the gateway.
pub const NON_CONFIG_ENV: &[&str] = &[
    "MESH_CONFIG",
    "MESH_JSON",
    "MESH_LOG",
    "MESH_NATS_SERVER",
    "MESH_NATS_VERSION",
];

/// Top-level fields of [`CliConfig`], lower case as in `MESH_<FIELD>`.
const CLI_FIELDS: &[&str] = &[
    "nats_url",
    "nats_creds",
    "auth_dir",
    "nats_nkey",
    "nats_user",
    "nats_password",
    "nats_token",
    "nats_tls_ca",
    "nats_tls_cert",
    "nats_tls_key",
    "nats_js_domain",
    "names",
    "replicas",
    "fence_timeout",
    "console_addr",
    "console_token",
    "console_open_reads",
];

/// What mesh-cli needs to reach and name the mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CliConfig {
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// NATS credentials file (user JWT and nkey seed).
    pub nats_creds: Option<PathBuf>,
    /// File holding a user nkey seed (`SU...`).
    pub nats_nkey: Option<PathBuf>,
    /// NATS user, with `nats_password`.
    pub nats_user: Option<String>,
    /// Password of `nats_user`; never shown in `Debug`.
    pub nats_password: Option<Secret>,
    /// NATS authentication token; never shown in `Debug`.
    pub nats_token: Option<Secret>,
    /// PEM file of the CA of the server's certificate (turns TLS on).
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate (turns TLS on).
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of `nats_tls_cert`.
    pub nats_tls_key: Option<PathBuf>,
    /// The JetStream domain of the server that holds the mesh's streams and buckets (the hub's
    /// `jetstream { domain }`), for an operator connected to another region's leaf node: the
    /// JetStream API and KV subjects do not cross a leaf link, their domain-prefixed form
    /// (`$JS.<domain>.API.>`) does. `None`: the connected server's own JetStream.
    pub nats_js_domain: Option<String>,
    /// The auth directory (keys and issued credentials) for `agent add|revoke|list` and
    /// `kill --revoke`; `mesh-cli up` prints it, `mesh-cli auth init` creates one.
    pub auth_dir: Option<PathBuf>,
    /// Stream, bucket and subject names; must match the gateways'.
    pub names: MeshNames,
    /// Replicas of the streams and buckets mesh-cli creates when it runs before any gateway;
    /// must match the gateways' so that a cluster does not end up with single-replica streams.
    pub replicas: usize,
    /// How long kill and resume wait for every live gateway replica to confirm.
    #[serde(with = "humantime_serde")]
    pub fence_timeout: Duration,
    /// Where `mesh-cli console` listens (`--addr`).
    pub console_addr: String,
    /// The console's bearer tokens: `name:secret` pairs, comma separated (a bare `secret` is
    /// the operator `operator`). The name goes into the audit record of every write; never
    /// shown in `Debug`.
    pub console_token: Option<Secret>,
    /// Whether the console's reads (agents, policies, audit, events) are open without a token.
    /// Writes always need one.
    pub console_open_reads: bool,
}

impl Default for CliConfig {
    fn default() -> Self {
        CliConfig {
            nats_url: mesh_auth::connect::DEFAULT_URL.to_string(),
            nats_creds: None,
            auth_dir: None,
            nats_nkey: None,
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_js_domain: None,
            names: MeshNames::default(),
            replicas: 1,
            fence_timeout: Duration::from_secs(15),
            console_addr: "127.0.0.1:8470".to_string(),
            console_token: None,
            console_open_reads: false,
        }
    }
}

/// Values given as flags: the last layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `--nats-url`, `--nats-creds`, ... `--nats-tls-key`.
    pub nats: NatsFlags,
    /// `--js-domain`.
    pub js_domain: Option<String>,
    pub fence_timeout: Option<Duration>,
}

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: `{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("invalid configuration: {0}")]
    Connection(#[from] ConnectionError),
}

impl CliConfig {
    /// Loads defaults, then `file` if given, then the `MESH_*` entries of `env` (the environment
    /// is passed in so that tests never touch the process's), then `flags`; then validates.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_CONFIG_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("MESH")
                .prefix_separator("_")
                .separator("__")
                .source(Some(config_env(env))),
        );
        let mut cfg: CliConfig = builder.build()?.try_deserialize()?;
        let mut connection = cfg.connection();
        flags.nats.apply(&mut connection);
        cfg.set_connection(connection);
        if let Some(domain) = &flags.js_domain {
            cfg.nats_js_domain = Some(domain.clone());
        }
        if let Some(timeout) = flags.fence_timeout {
            cfg.fence_timeout = timeout;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: the prefix, ranges, emptiness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| ConfigError::Invalid {
            field,
            problem: problem.to_string(),
        };
        Subjects::new(self.names.prefix.clone())
            .map_err(|e| invalid("names.prefix", &e.to_string()))?;
        self.connection().check()?;
        if let Some(domain) = &self.nats_js_domain {
            check_domain(domain).map_err(|problem| invalid("nats_js_domain", problem))?;
        }
        if !matches!(self.replicas, 1..=5) {
            return Err(invalid("replicas", "must be 1 to 5 (3 for a cluster)"));
        }
        if self.fence_timeout.is_zero() {
            return Err(invalid("fence_timeout", "must be longer than zero"));
        }
        Ok(())
    }

    /// The subject builder for the configured prefix (validated by [`CliConfig::load`]).
    pub fn subjects(&self) -> Subjects {
        self.names.subjects().unwrap_or_default()
    }

    /// The gateway configuration the shared setup code needs: these names, connection and
    /// replicas, the gateway's defaults for the rest (consumer settings of `in_<id>` when
    /// mesh-cli creates one before any gateway has).
    pub fn gateway_config(&self) -> GatewayConfig {
        let mut gw = GatewayConfig {
            names: self.names.clone(),
            replicas: self.replicas,
            ..GatewayConfig::default()
        };
        gw.set_connection(self.connection());
        gw
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

    /// Replaces the NATS connection settings (a local mesh's URL and no credentials, say).
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

    /// This configuration with `c` as its NATS connection.
    pub fn with_connection(mut self, c: NatsConnection) -> Self {
        self.set_connection(c);
        self
    }
}

/// Why `domain` cannot name a JetStream domain, if it cannot: it becomes one token of
/// `$JS.<domain>.API.>`, as nats-server requires of its `jetstream { domain }`.
fn check_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("is empty; leave it out to use the connected server's own JetStream");
    }
    if domain
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
    {
        return Err("must be one subject token: no dots, wildcards or spaces (e.g. `hub`)");
    }
    Ok(())
}

/// The `MESH_*` entries of `env` that are mesh-cli configuration, or unknown to both mesh-cli
/// and the gateway (those are refused by the parser, naming the field).
fn config_env(env: &HashMap<String, String>) -> HashMap<String, String> {
    let gateway_fields = gateway_fields();
    env.iter()
        .filter(|(k, _)| {
            let Some(rest) = k.strip_prefix("MESH_") else {
                return false;
            };
            if NON_CONFIG_ENV.contains(&k.as_str()) {
                return false;
            }
            let top = rest.split("__").next().unwrap_or(rest).to_ascii_lowercase();
            CLI_FIELDS.contains(&top.as_str()) || !gateway_fields.contains(&top)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The gateway's top-level configuration fields, read from its own type so the list cannot
/// drift.
fn gateway_fields() -> Vec<String> {
    match serde_json::to_value(GatewayConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
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
        let cfg = CliConfig::load(None, &HashMap::new(), &Overrides::default()).expect("loads");
        assert_eq!(cfg, CliConfig::default());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cli.toml");
        std::fs::write(
            &file,
            "nats_url = \"nats://file:4222\"\nfence_timeout = \"7s\"\n[names]\nprefix = \"f\"\n",
        )
        .expect("write");
        let e = env(&[
            ("MESH_NATS_URL", "nats://env:4222"),
            ("MESH_NAMES__PREFIX", "team"),
            ("HOME", "/root"),
        ]);
        let cfg = CliConfig::load(Some(&file), &e, &Overrides::default()).expect("loads");
        assert_eq!(cfg.nats_url, "nats://env:4222");
        assert_eq!(cfg.names.prefix, "team");
        assert_eq!(cfg.fence_timeout, Duration::from_secs(7));
        let flags = Overrides {
            nats: NatsFlags {
                nats_url: Some("nats://flag:4222".into()),
                ..NatsFlags::default()
            },
            js_domain: None,
            fence_timeout: Some(Duration::from_millis(250)),
        };
        let cfg = CliConfig::load(Some(&file), &e, &flags).expect("loads");
        assert_eq!(cfg.nats_url, "nats://flag:4222");
        assert_eq!(cfg.fence_timeout, Duration::from_millis(250));
    }

    #[test]
    fn gateway_only_and_non_config_variables_are_ignored() {
        let e = env(&[
            ("MESH_ACK_WAIT", "40s"),
            ("MESH_REQUEST_TIMEOUT", "2s"),
            ("MESH_CONFIG", "/nowhere.toml"),
            ("MESH_NATS_SERVER", "/bin/nats-server"),
        ]);
        let cfg = CliConfig::load(None, &e, &Overrides::default()).expect("loads");
        assert_eq!(cfg, CliConfig::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let err = CliConfig::load(
            None,
            &env(&[("MESH_NATS_URLL", "x")]),
            &Overrides::default(),
        )
        .expect_err("typo refused");
        assert!(matches!(err, ConfigError::Load(_)));
        assert!(err.to_string().contains("nats_urll"), "{err}");

        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cli.toml");
        std::fs::write(&file, "fence_timout = \"1s\"\n").expect("write");
        let err = CliConfig::load(Some(&file), &HashMap::new(), &Overrides::default())
            .expect_err("typo refused");
        assert!(err.to_string().contains("fence_timout"), "{err}");

        let err = CliConfig::load(
            None,
            &env(&[("MESH_NAMES__PREFIX", "a.*")]),
            &Overrides::default(),
        )
        .expect_err("wildcard refused");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "names.prefix",
                ..
            }
        ));
        let flags = Overrides {
            fence_timeout: Some(Duration::ZERO),
            ..Overrides::default()
        };
        let err = CliConfig::load(None, &HashMap::new(), &flags).expect_err("zero refused");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "fence_timeout",
                ..
            }
        ));
    }

    #[test]
    fn gateway_config_carries_names_replicas_and_connection() {
        let cfg = CliConfig {
            replicas: 3,
            nats_url: "tls://a:1,tls://b:2".into(),
            nats_token: Some(Secret::new("t")),
            nats_tls_ca: Some("/ca.pem".into()),
            ..CliConfig::default()
        };
        let gw = cfg.gateway_config();
        assert_eq!(gw.replicas, 3);
        assert_eq!(gw.names, cfg.names);
        assert_eq!(gw.connection(), cfg.connection());
        assert_eq!(gw.nats_token, Some(Secret::new("t")));
    }

    #[test]
    fn connection_settings_layer_like_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cli.toml");
        std::fs::write(
            &file,
            "nats_url = \"nats://a:1,nats://b:2\"\nnats_tls_ca = \"/file-ca.pem\"\n",
        )
        .expect("write");
        let e = env(&[
            ("MESH_NATS_TOKEN", "from-env"),
            ("MESH_NATS_TLS_CA", "/env-ca.pem"),
            ("MESH_NATS_TLS_CERT", "/env-cert.pem"),
            ("MESH_NATS_TLS_KEY", "/env-key.pem"),
        ]);
        let cfg = CliConfig::load(Some(&file), &e, &Overrides::default()).expect("loads");
        assert_eq!(cfg.nats_url, "nats://a:1,nats://b:2");
        assert_eq!(cfg.nats_token, Some(Secret::new("from-env")));
        assert_eq!(cfg.nats_tls_ca, Some(PathBuf::from("/env-ca.pem")));
        assert_eq!(cfg.nats_tls_key, Some(PathBuf::from("/env-key.pem")));
        assert!(
            !format!("{cfg:?}").contains("from-env"),
            "Debug shows the token"
        );

        let flags = Overrides {
            nats: NatsFlags {
                nats_token: Some("from-flag".into()),
                nats_tls_ca: Some("/flag-ca.pem".into()),
                ..NatsFlags::default()
            },
            ..Overrides::default()
        };
        let cfg = CliConfig::load(Some(&file), &e, &flags).expect("loads");
        assert_eq!(cfg.nats_token, Some(Secret::new("from-flag")));
        assert_eq!(cfg.nats_tls_ca, Some(PathBuf::from("/flag-ca.pem")));

        // Two ways to authenticate: refused, naming both.
        let e = env(&[("MESH_NATS_TOKEN", "t"), ("MESH_NATS_NKEY", "/u.nk")]);
        let err = CliConfig::load(None, &e, &Overrides::default()).expect_err("conflict");
        assert!(
            matches!(
                err,
                ConfigError::Connection(ConnectionError::Conflict { .. })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("MESH_NATS_TOKEN"), "{err}");
    }

    #[test]
    fn the_js_domain_layers_and_must_be_one_token() {
        let e = env(&[("MESH_NATS_JS_DOMAIN", "hub")]);
        let cfg = CliConfig::load(None, &e, &Overrides::default()).expect("loads");
        assert_eq!(cfg.nats_js_domain.as_deref(), Some("hub"));
        let flags = Overrides {
            js_domain: Some("east".into()),
            ..Overrides::default()
        };
        let cfg = CliConfig::load(None, &e, &flags).expect("loads");
        assert_eq!(cfg.nats_js_domain.as_deref(), Some("east"));
        // The gateway ignores it, so one environment serves both.
        assert!(mesh_gateway::GatewayConfig::load(None, e).is_ok());
        for bad in ["", "a.b", "hub*", ">", "a b"] {
            let err = CliConfig::load(
                None,
                &env(&[("MESH_NATS_JS_DOMAIN", bad)]),
                &Overrides::default(),
            )
            .expect_err("refused");
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        field: "nats_js_domain",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }
}
