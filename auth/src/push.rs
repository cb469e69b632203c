//! Pushing an account JWT to the servers: how a revocation reaches NATS without a restart.
//!
//! With the full resolver every server stores account JWTs on disk and takes updates on
//! `$SYS.REQ.CLAIMS.UPDATE` from a system-account user; cluster members pass them on to each
//! other. On an update the server closes the connections of users it now refuses.

use std::time::Duration;

use serde::Deserialize;

use crate::error::AuthError;

/// The update subject of the full resolver.
pub const CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    description: String,
}

/// Sends `account_jwt` to the servers as the system user `system`, and waits for a server to
/// say it took it.
pub async fn push_account(
    system: &async_nats::Client,
    account_jwt: &str,
    timeout: Duration,
) -> Result<(), AuthError> {
    let request = system.request(CLAIMS_UPDATE, account_jwt.to_string().into());
    let reply = match tokio::time::timeout(timeout, request).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(AuthError::Push(e.to_string())),
        Err(_) => {
            return Err(AuthError::Push(format!(
                "no server answered on {CLAIMS_UPDATE} within {timeout:?} (is the server's resolver `full`?)"
            )))
        }
    };
    let parsed: Reply = serde_json::from_slice(&reply.payload).map_err(|e| {
        AuthError::Push(format!(
            "unreadable answer {:?}: {e}",
            String::from_utf8_lossy(&reply.payload)
        ))
    })?;
    match parsed.error {
        Some(e) => Err(AuthError::Push(format!(
            "server refused it ({}): {}",
            e.code, e.description
        ))),
        None => Ok(()),
    }
}
