//! [`Mesh`]: a connection to the mesh's NATS server with its configuration, and lookups of the
//! mesh's streams and buckets that tell "not created yet" apart from a failure.

use async_nats::jetstream::context::{AccountError, AccountErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{self, kv, stream};
use async_nats::Client;
use mesh_gateway::MeshObjects;
use mesh_schemas::Subjects;

use crate::config::CliConfig;
use crate::connect::{self, redact};
use crate::error::CliError;

/// A connected mesh-cli session.
pub struct Mesh {
    /// The connection every command uses.
    pub client: Client,
    /// JetStream on that connection.
    pub js: jetstream::Context,
    /// The configuration the session was opened with.
    pub cfg: CliConfig,
    /// The subject builder for the configured prefix.
    pub subjects: Subjects,
}

impl Mesh {
    /// Connects and checks that the server has JetStream. A JetStream that is there but does
    /// not answer in time, or has no leader yet (a cluster electing after a node loss), is not
    /// an error here: each command's own requests retry or fail with what they were doing.
    pub async fn open(cfg: CliConfig) -> Result<Mesh, CliError> {
        let client = connect::connect(&cfg).await?;
        let js = match &cfg.nats_js_domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        match js.query_account().await {
            Ok(_) => {}
            Err(e) if electing(&e) => {
                tracing::warn!(error = %e, "JetStream does not answer yet (a cluster electing?); going on");
            }
            Err(e) => {
                let hint = match &cfg.nats_js_domain {
                    Some(domain) => format!(
                        "no JetStream answers in domain `{domain}` from {}; check that the hub's \
                         `jetstream {{ domain }}` is `{domain}` and that this server is linked to it",
                        redact(&cfg.nats_url)
                    ),
                    None => format!(
                        "JetStream does not answer at {}; the mesh needs a server started with \
                         JetStream (nats-server -js, or `mesh-cli up`) and a user allowed to use \
                         it; connected to another region's leaf node, give the hub's JetStream \
                         domain (--js-domain)",
                        redact(&cfg.nats_url)
                    ),
                };
                return Err(CliError::nats(hint, e));
            }
        }
        let subjects = cfg.subjects();
        Ok(Mesh {
            client,
            js,
            cfg,
            subjects,
        })
    }

    /// JetStream on this session's connection and domain whose requests each wait at most
    /// `timeout`.
    pub fn js_within(&self, timeout: std::time::Duration) -> jetstream::Context {
        let mut js = self.js.clone();
        js.set_timeout(timeout);
        js
    }

    /// The subject a write to `key` of KV bucket `bucket` is published on: `$KV.<bucket>.<key>`,
    /// through the JetStream domain when one is configured (nats-server maps
    /// `$JS.<domain>.API.$KV.>` to `$KV.>` in the domain's server).
    pub fn kv_subject(&self, bucket: &str, key: &str) -> String {
        match &self.cfg.nats_js_domain {
            Some(domain) => format!("$JS.{domain}.API.$KV.{bucket}.{key}"),
            None => format!("$KV.{bucket}.{key}"),
        }
    }

    /// Creates the mesh's streams and buckets, or checks those that exist (as a gateway does).
    pub async fn ensure(&self) -> Result<MeshObjects, CliError> {
        Ok(mesh_gateway::setup::ensure(&self.js, &self.cfg.gateway_config()).await?)
    }

    /// The stream `name`, or `None` when it does not exist.
    pub async fn stream(&self, name: &str) -> Result<Option<stream::Stream>, CliError> {
        match self.js.get_stream(name).await {
            Ok(s) => Ok(Some(s)),
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(None)
            }
            Err(e) => Err(CliError::nats(format!("could not read stream {name}"), e)),
        }
    }

    /// The KV bucket `name`, or `None` when it does not exist.
    pub async fn bucket(&self, name: &str) -> Result<Option<kv::Store>, CliError> {
        if self.stream(&format!("KV_{name}")).await?.is_none() {
            return Ok(None);
        }
        self.js
            .get_key_value(name)
            .await
            .map(Some)
            .map_err(|e| CliError::nats(format!("could not open KV bucket {name}"), e))
    }
}

/// Whether JetStream is there but cannot answer now: the request timed out, or the cluster has
/// no meta leader. Both pass once the cluster has elected one.
fn electing(e: &AccountError) -> bool {
    match e.kind() {
        AccountErrorKind::TimedOut => true,
        AccountErrorKind::JetStream(j) => {
            j.error_code() == jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE
        }
        _ => false,
    }
}
