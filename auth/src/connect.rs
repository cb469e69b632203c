//! Connection options shared by every role: how to reach and authenticate to NATS.
//!
//! [`NatsConnection`] holds the settings as configured (the gateway's and mesh-cli's
//! `nats_url`, `nats_creds`, ... fields, `MESH_NATS_*` variables and `--nats-*` flags all map
//! onto it); [`NatsConnection::prepare`] checks them, reads the files they name and turns them
//! into an [`async_nats::ConnectOptions`] and a server list; [`Prepared::connect`] connects once,
//! with a deadline, and says why it could not.
//!
//! Every role uses an inbox prefix of its own: [`GATEWAY_INBOX_PREFIX`], [`CLI_INBOX_PREFIX`],
//! [`agent_inbox_prefix`]. In a secured mesh an agent's permissions only allow it to subscribe
//! `_INBOX_<id>.>`, so an agent client with the default `_INBOX` prefix cannot get replies
//! (JetStream acks, requests) at all.

mod files;
mod secret;
mod servers;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, ServerAddr};
use serde::{Deserialize, Serialize};

pub use secret::Secret;
pub use servers::{parse_servers, redact};

/// The URL used when none is configured.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Inbox prefix of gateway replicas.
pub const GATEWAY_INBOX_PREFIX: &str = crate::permissions::GATEWAY_INBOX;

/// Inbox prefix of mesh-cli (and other operator tools).
pub const CLI_INBOX_PREFIX: &str = crate::permissions::OPERATOR_INBOX;

/// Inbox prefix of agent `id`: `_INBOX_<id>`. An agent's NATS permissions allow subscribing
/// `_INBOX_<id>.>` and nothing like it of another agent.
pub fn agent_inbox_prefix(id: &str) -> String {
    crate::permissions::agent_inbox(id)
}

/// How to reach and authenticate to NATS, as configured.
///
/// At most one way to authenticate: `creds`, `nkey`, `user` with `password`, `token`, or a
/// user or token inside the URL. TLS is on when a URL says `tls://` (or `wss://`) or any of
/// `tls_ca`, `tls_cert`, `tls_key` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConnection {
    /// Server URL(s), comma separated: `nats://host:port`, `tls://host:port`, `ws://...`,
    /// `wss://...` or `host:port`. List every node of a cluster so the client can reconnect to
    /// any of them.
    pub url: String,
    /// Path of a `.creds` file (user JWT and nkey seed), as `nsc` or `mesh-cli agent add` write.
    pub creds: Option<PathBuf>,
    /// Path of a file holding a user nkey seed (`SU...`), for servers that list nkey users.
    /// A path, not the seed itself, so the seed stays out of process lists and environments.
    pub nkey: Option<PathBuf>,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<Secret>,
    /// Authentication token.
    pub token: Option<Secret>,
    /// PEM file of the CA(s) that signed the server's certificate; without it, the system's
    /// roots are trusted.
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate, for servers that verify clients (`verify: true`).
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for NatsConnection {
    fn default() -> Self {
        NatsConnection {
            url: DEFAULT_URL.to_string(),
            creds: None,
            nkey: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// One connection setting, named the way operators set it: config field, flag and variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    Url,
    Creds,
    Nkey,
    User,
    Password,
    Token,
    TlsCa,
    TlsCert,
    TlsKey,
}

impl Field {
    /// Every field, in the order of [`NatsConnection`].
    pub const ALL: [Field; 9] = [
        Field::Url,
        Field::Creds,
        Field::Nkey,
        Field::User,
        Field::Password,
        Field::Token,
        Field::TlsCa,
        Field::TlsCert,
        Field::TlsKey,
    ];

    /// The field's name in the gateway's and mesh-cli's configuration files.
    pub fn config_name(self) -> &'static str {
        match self {
            Field::Url => "nats_url",
            Field::Creds => "nats_creds",
            Field::Nkey => "nats_nkey",
            Field::User => "nats_user",
            Field::Password => "nats_password",
            Field::Token => "nats_token",
            Field::TlsCa => "nats_tls_ca",
            Field::TlsCert => "nats_tls_cert",
            Field::TlsKey => "nats_tls_key",
        }
    }

    /// The command-line flag, `--nats-creds` for `nats_creds`.
    pub fn flag(self) -> String {
        format!("--{}", self.config_name().replace('_', "-"))
    }

    /// The environment variable, `MESH_NATS_CREDS` for `nats_creds`.
    pub fn env(self) -> String {
        format!("MESH_{}", self.config_name().to_ascii_uppercase())
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ({}, {})",
            self.config_name(),
            self.flag(),
            self.env()
        )
    }
}

/// Settings that cannot make a connection: the connection was not attempted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    #[error(
        "no NATS server URL: {field} is empty; give one or more, comma separated",
        field = Field::Url
    )]
    NoUrl,
    #[error(
        "NATS server URL `{url}` in {field} {problem}; use nats://host:port, tls://host:port, \
         ws://host:port or host:port, comma separated",
        field = Field::Url
    )]
    BadUrl { url: String, problem: String },
    #[error("{} does not exist (set by {field})", path.display())]
    MissingFile { field: Field, path: PathBuf },
    #[error("could not read {} (set by {field})", path.display())]
    Unreadable {
        field: Field,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} (set by {field}) is not {what}: {problem}", path.display())]
    Malformed {
        field: Field,
        path: PathBuf,
        what: &'static str,
        problem: String,
    },
    #[error("{first} and {second} are both set; use one way to authenticate to NATS")]
    Conflict { first: Field, second: Field },
    #[error("{field} is set without {needs}; set both or neither")]
    Incomplete { field: Field, needs: Field },
    #[error(
        "inbox prefix `{prefix}` is not a subject without wildcards or spaces (e.g. `_INBOX_<id>`)"
    )]
    InboxPrefix { prefix: String },
}

impl ConnectionError {
    /// The setting at fault.
    pub fn field(&self) -> Option<Field> {
        match self {
            ConnectionError::NoUrl | ConnectionError::BadUrl { .. } => Some(Field::Url),
            ConnectionError::MissingFile { field, .. }
            | ConnectionError::Unreadable { field, .. }
            | ConnectionError::Malformed { field, .. }
            | ConnectionError::Incomplete { field, .. } => Some(*field),
            ConnectionError::Conflict { second, .. } => Some(*second),
            ConnectionError::InboxPrefix { .. } => None,
        }
    }
}

/// A connection attempt that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error(transparent)]
    Settings(#[from] ConnectionError),
    #[error(
        "NATS at {url} refused the credentials; check the user, password, token, nkey or creds \
         file, and that the server knows this user"
    )]
    Auth {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(
        "TLS with NATS at {url} failed; check the URL's scheme, the CA (`nats_tls_ca`) and, if \
         the server verifies clients, the client certificate and key (`nats_tls_cert`, \
         `nats_tls_key`)"
    )]
    Tls {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("could not connect to NATS at {url}; check that nats-server runs there and the URL is right")]
    Unreachable {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("no answer from NATS at {url} within {}s; check that nats-server runs there and the URL is right", after.as_secs_f64())]
    Timeout { url: String, after: Duration },
}

/// Settings turned into what async-nats takes.
#[derive(Debug)]
pub struct Prepared {
    /// Name, inbox prefix, credentials and TLS; add role-specific options (reconnect policy,
    /// event callback) before connecting.
    pub options: ConnectOptions,
    /// The servers, in the configured order.
    pub servers: Vec<ServerAddr>,
    /// The URL list with passwords and tokens hidden, for messages.
    pub shown_url: String,
}

impl NatsConnection {
    /// Settings for `url` and nothing else.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConnection {
            url: url.into(),
            ..NatsConnection::default()
        }
    }

    /// The settings as `MESH_NATS_*` variables, only those that are set: for a child process
    /// (mesh-cli starting a gateway) without putting secrets on its command line.
    pub fn env_vars(&self) -> Vec<(String, std::ffi::OsString)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.as_os_str().to_owned());
        let text = |t: Option<&str>| t.map(std::ffi::OsString::from);
        let values = [
            (Field::Url, text(Some(self.url.as_str()))),
            (Field::Creds, path(&self.creds)),
            (Field::Nkey, path(&self.nkey)),
            (Field::User, text(self.user.as_deref())),
            (
                Field::Password,
                text(self.password.as_ref().map(Secret::expose)),
            ),
            (Field::Token, text(self.token.as_ref().map(Secret::expose))),
            (Field::TlsCa, path(&self.tls_ca)),
            (Field::TlsCert, path(&self.tls_cert)),
            (Field::TlsKey, path(&self.tls_key)),
        ];
        values
            .into_iter()
            .filter_map(|(field, value)| value.map(|v| (field.env(), v)))
            .collect()
    }

    /// Checks what can be checked without reading files: the URL list, and that the settings
    /// do not conflict or miss their other half. [`NatsConnection::prepare`] does this too.
    pub fn check(&self) -> Result<Vec<ServerAddr>, ConnectionError> {
        let servers = parse_servers(&self.url)?;
        let methods = [
            (Field::Creds, self.creds.is_some()),
            (Field::Nkey, self.nkey.is_some()),
            (Field::User, self.user.is_some() || self.password.is_some()),
            (Field::Token, self.token.is_some()),
            (Field::Url, servers::url_credentials(&servers)),
        ];
        let mut set = methods.iter().filter(|(_, on)| *on).map(|(f, _)| *f);
        if let (Some(first), Some(second)) = (set.next(), set.next()) {
            return Err(ConnectionError::Conflict { first, second });
        }
        for (field, has, needs, has_other) in [
            (
                Field::User,
                self.user.is_some(),
                Field::Password,
                self.password.is_some(),
            ),
            (
                Field::Password,
                self.password.is_some(),
                Field::User,
                self.user.is_some(),
            ),
            (
                Field::TlsCert,
                self.tls_cert.is_some(),
                Field::TlsKey,
                self.tls_key.is_some(),
            ),
            (
                Field::TlsKey,
                self.tls_key.is_some(),
                Field::TlsCert,
                self.tls_cert.is_some(),
            ),
        ] {
            if has && !has_other {
                return Err(ConnectionError::Incomplete { field, needs });
            }
        }
        Ok(servers)
    }

    /// Checks the settings, reads the files they name, and builds the options of a client
    /// called `name` whose replies arrive under `inbox_prefix`.
    pub fn prepare(
        &self,
        name: impl ToString,
        inbox_prefix: &str,
    ) -> Result<Prepared, ConnectionError> {
        let servers = self.check()?;
        check_inbox_prefix(inbox_prefix)?;
        let mut options = ConnectOptions::new()
            .name(name)
            .custom_inbox_prefix(inbox_prefix);
        if let Some(path) = &self.creds {
            options = files::creds(options, path)?;
        }
        if let Some(path) = &self.nkey {
            options = options.nkey(files::nkey_seed(path)?);
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_string());
        }
        let tls_files = self.tls_ca.is_some() || self.tls_cert.is_some();
        if let Some(path) = &self.tls_ca {
            files::certificates(Field::TlsCa, path)?;
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            files::certificates(Field::TlsCert, cert)?;
            files::private_key(key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if tls_files || servers::wants_tls(&servers) {
            options = options.require_tls(true);
        }
        Ok(Prepared {
            options,
            servers,
            shown_url: redact(&self.url),
        })
    }

    /// Prepares and connects once, within `timeout`: see [`Prepared::connect`].
    pub async fn connect(
        &self,
        name: impl ToString,
        inbox_prefix: &str,
        timeout: Duration,
    ) -> Result<Client, ConnectError> {
        self.prepare(name, inbox_prefix)?.connect(timeout).await
    }
}

impl Prepared {
    /// Connects, trying each server once and giving each `timeout`. Without
    /// `retry_on_initial_connect` in the options, a refusal comes back at once as
    /// [`ConnectError::Auth`] rather than as a hang.
    pub async fn connect(self, timeout: Duration) -> Result<Client, ConnectError> {
        let url = self.shown_url;
        // Each server gets `timeout`; the whole attempt a little more than all of them.
        let servers = u32::try_from(self.servers.len()).unwrap_or(u32::MAX).max(1);
        let overall = timeout.saturating_mul(servers);
        let options = self.options.connection_timeout(timeout);
        match tokio::time::timeout(
            overall + Duration::from_secs(1),
            options.connect(self.servers),
        )
        .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(match source.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    ConnectError::Auth { url, source }
                }
                ConnectErrorKind::Tls => ConnectError::Tls { url, source },
                _ if tls_alert(&source) => ConnectError::Tls { url, source },
                ConnectErrorKind::TimedOut => ConnectError::Timeout {
                    url,
                    after: timeout,
                },
                _ => ConnectError::Unreachable { url, source },
            }),
            Err(_) => Err(ConnectError::Timeout {
                url,
                after: overall,
            }),
        }
    }
}

/// Whether an I/O error of a connection attempt is a TLS failure: async-nats reports a refused
/// handshake (the server wants a client certificate, or does not trust ours) as I/O.
fn tls_alert(error: &async_nats::ConnectError) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        if e.is::<async_nats::rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if inner.is::<async_nats::rustls::Error>() {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

/// A subject without wildcards, spaces or empty tokens.
fn check_inbox_prefix(prefix: &str) -> Result<(), ConnectionError> {
    let ok = !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && !token
                    .chars()
                    .any(|c| c.is_whitespace() || c == '*' || c == '>')
        });
    if ok {
        Ok(())
    } else {
        Err(ConnectionError::InboxPrefix {
            prefix: prefix.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
