//! How the benchmark's clients reach NATS. On an open server anyone connects as anyone; on a
//! secured server (operator mode, as `mesh-cli up` runs it) every identity brings credentials
//! of its own from a fresh auth directory ([`mesh_auth::AuthDir`]): each agent and each sender
//! its `.creds` and its inbox prefix `_INBOX_<id>`, the gateway replicas the gateway's creds
//! (through `MESH_NATS_CREDS`, as `mesh-gateway` reads them), the harness the operator's.
//!
//! [`Access::client`] gives the same inbox prefix in both modes, so that the secured phase's two
//! sides differ only in credentials.

use std::collections::HashMap;
use std::ffi::OsString;

use anyhow::Context;
use async_nats::ConnectOptions;
use mesh_auth::connect::{NatsConnection, CLI_INBOX_PREFIX};
use mesh_auth::{permissions, AuthDir};
use tempfile::TempDir;

/// The mesh's subject prefix, as the gateway's default configuration has it.
pub const PREFIX: &str = "mesh";

/// Open, or secured with an identity per client.
pub struct Access {
    /// `None` on an open server.
    secured: Option<Secured>,
}

struct Secured {
    auth: AuthDir,
    /// `.creds` text by identity (agents and senders), issued once each.
    creds: HashMap<String, String>,
    /// Holds the auth directory and the resolver's store.
    dir: TempDir,
}

impl Access {
    /// An open server: no credentials.
    pub fn open() -> Access {
        Access { secured: None }
    }

    /// A fresh auth directory, with credentials issued to every identity in `ids`.
    pub fn secured(ids: impl IntoIterator<Item = String>) -> anyhow::Result<Access> {
        let dir = tempfile::tempdir().context("cannot create the auth directory")?;
        let auth = AuthDir::init(&dir.path().join("auth"), PREFIX)
            .context("cannot initialise the auth directory")?;
        let mut creds = HashMap::new();
        for id in ids {
            let new = auth
                .add_agent(&id, None)
                .with_context(|| format!("cannot issue credentials to {id}"))?;
            creds.insert(id, new.creds);
        }
        Ok(Access {
            secured: Some(Secured { auth, creds, dir }),
        })
    }

    pub fn is_secured(&self) -> bool {
        self.secured.is_some()
    }

    /// "open" or "secured", for progress lines and key suffixes.
    pub fn name(&self) -> &'static str {
        if self.is_secured() {
            "secured"
        } else {
            "open"
        }
    }

    /// The server's configuration: `None` for the harness's default (open, JetStream).
    pub fn server_conf(&self) -> anyhow::Result<Option<String>> {
        let Some(s) = &self.secured else {
            return Ok(None);
        };
        let text = s
            .auth
            .server_config(&s.dir.path().join("jwt"))
            .context("cannot write the secured server's configuration")?;
        Ok(Some(text))
    }

    /// Options of identity `id` (an agent or a sender): its inbox prefix and, when secured, its
    /// credentials.
    pub fn client(&self, id: &str) -> anyhow::Result<ConnectOptions> {
        let options = match &self.secured {
            None => ConnectOptions::new(),
            Some(s) => {
                let text = s
                    .creds
                    .get(id)
                    .with_context(|| format!("no credentials were issued to {id}"))?;
                ConnectOptions::with_credentials(text)
                    .with_context(|| format!("cannot read the credentials of {id}"))?
            }
        };
        Ok(options.custom_inbox_prefix(permissions::agent_inbox(id)))
    }

    /// The operator's options (the harness creates streams and reads presence as mesh-cli).
    pub fn operator(&self, url: &str) -> anyhow::Result<ConnectOptions> {
        let prepared = self
            .connection(url, |a| a.operator_creds())
            .prepare("mesh-bench operator", CLI_INBOX_PREFIX)
            .context("cannot prepare the operator's connection")?;
        Ok(prepared.options)
    }

    /// `MESH_NATS_*` variables of a gateway replica on `url`: the gateway's creds, when secured.
    pub fn gateway_env(&self, url: &str) -> Vec<(String, OsString)> {
        self.connection(url, |a| a.gateway_creds()).env_vars()
    }

    fn connection(
        &self,
        url: &str,
        creds: impl Fn(&AuthDir) -> std::path::PathBuf,
    ) -> NatsConnection {
        NatsConnection {
            creds: self.secured.as_ref().map(|s| creds(&s.auth)),
            ..NatsConnection::new(url)
        }
    }
}
