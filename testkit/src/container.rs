//! [`NatsContainer`]: a `nats` image started through Docker with testcontainers (feature
//! `testcontainers`, off by default).
//!
//! For machines with a Docker engine and no way to run the binary. The container runs
//! `nats-server -js`; it is removed when dropped. It has no restart on the same port and no
//! cluster: tests that need those use [`NatsServer`](crate::NatsServer) and
//! [`Cluster`](crate::Cluster).

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::HarnessError;

/// The client port inside the container.
const CLIENT_PORT: u16 = 4222;

/// A `nats` container with JetStream on; removed on drop.
#[derive(Debug)]
pub struct NatsContainer {
    /// The running container; dropping it removes it.
    _container: ContainerAsync<GenericImage>,
    /// `nats://<host>:<mapped port>`.
    url: String,
}

impl NatsContainer {
    /// Starts `nats:<tag>` (e.g. `"2.11"` for the oldest supported line, `"latest"`) and waits
    /// for "Server is ready" in its log.
    pub async fn start(tag: &str) -> Result<NatsContainer, HarnessError> {
        let image = format!("nats:{tag}");
        let failed = |e: testcontainers::TestcontainersError| HarnessError::Container {
            image: image.clone(),
            reason: e.to_string(),
        };
        let container = GenericImage::new("nats", tag)
            .with_exposed_port(CLIENT_PORT.tcp())
            .with_wait_for(WaitFor::message_on_either_std("Server is ready"))
            .with_cmd(["-js"])
            .start()
            .await
            .map_err(failed)?;
        let host = container.get_host().await.map_err(failed)?;
        let port = container
            .get_host_port_ipv4(CLIENT_PORT.tcp())
            .await
            .map_err(failed)?;
        Ok(NatsContainer {
            _container: container,
            url: format!("nats://{host}:{port}"),
        })
    }

    /// `nats://<host>:<port>` of the container's client port.
    pub fn url(&self) -> &str {
        &self.url
    }
}
