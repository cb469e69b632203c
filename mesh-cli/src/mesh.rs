//! [`Mesh`]: a connection to the mesh's NATS server with its configuration, and lookups of the
//! mesh's streams and buckets that tell "not created yet" apart from a failure.

use async_nats::jetstream::{self, context::GetStreamErrorKind, kv, stream};
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
    /// Connects and checks that the server has JetStream.
    pub async fn open(cfg: CliConfig) -> Result<Mesh, CliError> {
        let client = connect::connect(&cfg).await?;
        let js = jetstream::new(client.clone());
        js.query_account().await.map_err(|e| {
            CliError::nats(
                format!(
                    "JetStream does not answer at {}; the mesh needs a server started with \
                     JetStream (nats-server -js, or `mesh-cli up`) and a user allowed to use it",
                    redact(&cfg.nats_url)
                ),
                e,
            )
        })?;
        let subjects = cfg.subjects();
        Ok(Mesh {
            client,
            js,
            cfg,
            subjects,
        })
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
