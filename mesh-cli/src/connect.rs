//! Connecting to NATS: with a deadline, and with an error that names the URL that failed and
//! says what to do about it.

use std::time::Duration;

use async_nats::{Client, ConnectOptions};

use crate::config::CliConfig;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to try when the server cannot be reached.
const HINT: &str = "check that nats-server runs there and the URL is right (--nats-url, \
                    MESH_NATS_URL or nats_url in --config), or start a local mesh with `mesh-cli up`";

/// Why there is no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not read NATS credentials from {path}")]
    Creds {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not connect to NATS at {url} ({source}); {hint}", hint = HINT)]
    Unreachable {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("no answer from NATS at {url} within {}s; {hint}", CONNECT_TIMEOUT.as_secs(), hint = HINT)]
    Timeout { url: String },
}

/// Connects to the configured server(s).
pub async fn connect(cfg: &CliConfig) -> Result<Client, ConnectError> {
    let url = redact(&cfg.nats_url);
    let mut options = ConnectOptions::new()
        .name("mesh-cli")
        // Outside every agent's `_INBOX_<id>`: no agent may read the operator's replies.
        .custom_inbox_prefix(mesh_auth::permissions::OPERATOR_INBOX)
        .connection_timeout(CONNECT_TIMEOUT);
    if let Some(path) = &cfg.nats_creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::Creds {
                path: path.clone(),
                source,
            })?;
    }
    match tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        options.connect(cfg.nats_url.as_str()),
    )
    .await
    {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(source)) => Err(ConnectError::Unreachable { url, source }),
        Err(_) => Err(ConnectError::Timeout { url }),
    }
}

/// The URL(s) with any password replaced, for messages.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            match rest.split_once('@') {
                Some((userinfo, host)) => {
                    // `user:password` keeps the user; a lone token is hidden whole.
                    let shown = match userinfo.split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        None => "***".to_string(),
                    };
                    let sep = if scheme.is_empty() { "" } else { "://" };
                    format!("{scheme}{sep}{shown}@{host}")
                }
                None => url.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("nats://127.0.0.1:1"), "nats://127.0.0.1:1");
        assert_eq!(redact("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(
            redact("nats://a:4222, tls://t0k3n@b:4222"),
            "nats://a:4222,tls://***@b:4222"
        );
    }
}
