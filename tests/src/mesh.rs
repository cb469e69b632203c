//! [`Mesh`]: a nats-server for one test, secured by default as `mesh-cli up` runs it, with a
//! client for each role. Every agent connects with credentials of its own (issued on first
//! use), the gateways and the operator with theirs; [`Mesh::insecure`] is the open mode.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_nats::{Client, ConnectOptions};
use mesh_auth::{permissions, AuthDir};
use tempfile::TempDir;

use crate::NatsServer;

/// The JetStream domain of [`Mesh::start_hub`].
pub const HUB_DOMAIN: &str = "hub";

/// A nats-server and the identities to use it.
pub struct Mesh {
    /// The server (restart, stop, logs).
    pub server: NatsServer,
    /// The auth directory; `None` in open mode.
    auth: Option<AuthDir>,
    /// Agents' `.creds` texts, issued once per id.
    agents: Mutex<HashMap<String, String>>,
    /// Holds the auth directory and the resolver's store; deleted after the server.
    _dir: TempDir,
}

impl Mesh {
    /// A secured server: operator mode, full resolver, JetStream.
    pub fn start() -> Mesh {
        Self::secured(|auth, jwt| {
            NatsServer::start_with_conf(&auth.server_config(jwt).expect("server config"))
        })
    }

    /// [`Mesh::start`] with a leafnode listener and the JetStream domain [`HUB_DOMAIN`]: the
    /// hub (region A) that other regions link to (see [`crate::region::Region`]). Operators in
    /// another region reach its JetStream API and buckets through that domain only.
    pub fn start_hub() -> Mesh {
        Self::secured(|auth, jwt| {
            let conf = auth.region_server_config(jwt).expect("server config");
            NatsServer::start_hub_with_conf(&format!(
                "{conf}jetstream {{\n  domain: {HUB_DOMAIN}\n}}\n"
            ))
        })
    }

    fn secured(start: impl FnOnce(&AuthDir, &std::path::Path) -> NatsServer) -> Mesh {
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = AuthDir::init(&dir.path().join("auth"), "mesh").expect("auth init");
        Mesh {
            server: start(&auth, &dir.path().join("jwt")),
            auth: Some(auth),
            agents: Mutex::new(HashMap::new()),
            _dir: dir,
        }
    }

    /// An open server: anyone may do anything (`mesh-cli up --insecure`).
    pub fn insecure() -> Mesh {
        Mesh {
            server: NatsServer::start(),
            auth: None,
            agents: Mutex::new(HashMap::new()),
            _dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The auth directory (secured mode only).
    pub fn auth(&self) -> &AuthDir {
        self.auth.as_ref().expect("a secured mesh")
    }

    pub fn is_secured(&self) -> bool {
        self.auth.is_some()
    }

    /// The gateways' creds file, if secured.
    pub fn gateway_creds(&self) -> Option<PathBuf> {
        self.auth.as_ref().map(AuthDir::gateway_creds)
    }

    /// The operator's creds file, if secured.
    pub fn operator_creds(&self) -> Option<PathBuf> {
        self.auth.as_ref().map(AuthDir::operator_creds)
    }

    /// A client as the operator (mesh-cli's identity).
    pub async fn operator(&self) -> Client {
        self.operator_at(&self.url()).await
    }

    /// A client as the operator, connected to `url` (another region's server).
    pub async fn operator_at(&self, url: &str) -> Client {
        let creds = self.operator_creds().map(read);
        connect(url, creds, permissions::OPERATOR_INBOX).await
    }

    /// A client as a gateway replica.
    pub async fn gateway_client(&self) -> Client {
        let creds = self.gateway_creds().map(read);
        connect(&self.url(), creds, permissions::GATEWAY_INBOX).await
    }

    /// A client as agent `id`, with its own credentials and inbox prefix.
    pub async fn agent(&self, id: &str) -> Client {
        self.agent_at(&self.url(), id).await
    }

    /// A client as agent `id`, connected to `url` (another region's server).
    pub async fn agent_at(&self, url: &str, id: &str) -> Client {
        let creds = self.agent_creds(id);
        connect(url, creds, &permissions::agent_inbox(id)).await
    }

    /// A client as agent `id` whose connection events (permission violations among them)
    /// arrive on the returned channel.
    pub async fn agent_watched(
        &self,
        id: &str,
    ) -> (
        Client,
        tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    ) {
        self.agent_watched_at(&self.url(), id).await
    }

    /// [`Mesh::agent_watched`], connected to `url` (another region's server).
    pub async fn agent_watched_at(
        &self,
        url: &str,
        id: &str,
    ) -> (
        Client,
        tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let creds = self.agent_creds(id).expect("a secured mesh");
        let client = ConnectOptions::with_credentials(&creds)
            .expect("creds parse")
            .custom_inbox_prefix(permissions::agent_inbox(id))
            .event_callback(move |e| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(e);
                }
            })
            .connect(url)
            .await
            .expect("connect to test nats-server");
        (client, rx)
    }

    /// Agent `id`'s `.creds` text, issued on first use (secured mode only).
    pub fn agent_creds(&self, id: &str) -> Option<String> {
        let auth = self.auth.as_ref()?;
        let mut agents = self.agents.lock().expect("agents lock");
        let creds = agents.entry(id.to_string()).or_insert_with(|| {
            auth.add_agent(id, None)
                .unwrap_or_else(|e| panic!("issue credentials to {id}: {e}"))
                .creds
        });
        Some(creds.clone())
    }
}

async fn connect(url: &str, creds: Option<String>, inbox: &str) -> Client {
    let options = match creds {
        Some(text) => ConnectOptions::with_credentials(&text).expect("creds parse"),
        None => ConnectOptions::new(),
    };
    options
        .custom_inbox_prefix(inbox)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
        .expect("connect to test nats-server")
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

impl Drop for Mesh {
    /// When a test fails, shows the permission violations the server logged: the first thing to
    /// look at when a secured test times out.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(log) = std::fs::read_to_string(self.server.log_path()) else {
            return;
        };
        for line in log.lines().filter(|l| l.contains("Violation")) {
            eprintln!("nats-server: {line}");
        }
    }
}
