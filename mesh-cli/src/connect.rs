//! Connecting to NATS: through mesh-auth's shared builder (URL list, creds, nkey, user and
//! password, token, TLS) with inbox prefix `_CLI_INBOX`, with a deadline, and with an error
//! that names the URL that failed and says what to do about it.

use std::time::Duration;

use async_nats::Client;
use mesh_auth::connect::{self as shared, ConnectionError, CLI_INBOX_PREFIX};

pub use mesh_auth::connect::redact;

use crate::config::CliConfig;

/// How long a connection attempt to one server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to try when the server cannot be reached.
const HINT: &str = "check that nats-server runs there and the URL is right (--nats-url, \
                    MESH_NATS_URL or nats_url in --config), or start a local mesh with `mesh-cli up`";

/// Why there is no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection settings are wrong (a missing file, two ways to authenticate, a bad
    /// URL); nothing was attempted.
    #[error(transparent)]
    Settings(#[from] ConnectionError),
    /// The server refused the credentials or the TLS handshake; the message says what to check.
    #[error(transparent)]
    Refused(shared::ConnectError),
    #[error("could not connect to NATS at {url}; {hint}", hint = HINT)]
    Unreachable {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("no answer from NATS at {url} within {}s; {hint}", after.as_secs(), hint = HINT)]
    Timeout { url: String, after: Duration },
}

impl From<shared::ConnectError> for ConnectError {
    fn from(e: shared::ConnectError) -> Self {
        match e {
            shared::ConnectError::Settings(e) => ConnectError::Settings(e),
            shared::ConnectError::Unreachable { url, source } => {
                ConnectError::Unreachable { url, source }
            }
            shared::ConnectError::Timeout { url, after } => ConnectError::Timeout { url, after },
            other => ConnectError::Refused(other),
        }
    }
}

/// Connects to the configured server(s).
pub async fn connect(cfg: &CliConfig) -> Result<Client, ConnectError> {
    Ok(cfg
        .connection()
        .connect("mesh-cli", CLI_INBOX_PREFIX, CONNECT_TIMEOUT)
        .await?)
}
