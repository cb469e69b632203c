//! Gateway replicas for tests: real `mesh-gateway` processes (for SIGKILL and restart) or
//! in-process tasks (cheaper, same code path through `mesh_gateway::run`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use mesh_gateway::GatewayConfig;
use mesh_schemas::{decode, GatewayPresence};

/// Test settings: short timeouts so that retries and failover happen within a test's time.
pub fn test_config(url: &str, id: &str) -> GatewayConfig {
    GatewayConfig {
        nats_url: url.to_string(),
        gateway_id: Some(id.to_string()),
        request_timeout: Duration::from_millis(500),
        ack_wait: Duration::from_secs(3),
        pin_timeout: Duration::from_secs(4),
        max_retry_backoff: Duration::from_millis(200),
        drain_grace: Duration::from_secs(5),
        presence_interval: Duration::from_millis(250),
        ..GatewayConfig::default()
    }
}

/// A fresh secured mesh with one in-process replica `gw1`, live, and an operator client.
pub async fn one_gateway() -> (crate::Mesh, GatewayTask, async_nats::Client) {
    crate::init_tracing();
    let mesh = crate::Mesh::start();
    let gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let client = mesh.operator().await;
    wait_live(&client, &["gw1"]).await;
    (mesh, gw, client)
}

/// A fresh secured mesh with replicas `gw1` and `gw2` as `mesh-gateway` processes, both live,
/// and an operator client.
pub async fn two_processes() -> (crate::Mesh, [GatewayProcess; 2], async_nats::Client) {
    crate::init_tracing();
    let mesh = crate::Mesh::start();
    let gateways = [
        GatewayProcess::start_in(&mesh, "gw1"),
        GatewayProcess::start_in(&mesh, "gw2"),
    ];
    let client = mesh.operator().await;
    wait_live(&client, &["gw1", "gw2"]).await;
    (mesh, gateways, client)
}

/// A replica running as a task of the test process.
pub struct GatewayTask {
    pub id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl GatewayTask {
    /// Starts a replica on an open server with [`test_config`] (adjusted by `tweak`).
    pub async fn start(url: &str, id: &str, tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        let mut cfg = test_config(url, id);
        tweak(&mut cfg);
        let client = crate::connect(url).await;
        Self::run(client, cfg, id)
    }

    /// Starts a replica on an open server at `url` over `client`, a connection the test built
    /// itself (to give it connect options of its own).
    pub fn start_on(
        client: async_nats::Client,
        url: &str,
        id: &str,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let mut cfg = test_config(url, id);
        tweak(&mut cfg);
        Self::run(client, cfg, id)
    }

    /// Starts a replica on `mesh` with the gateways' credentials.
    pub async fn start_in(
        mesh: &crate::Mesh,
        id: &str,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let mut cfg = test_config(&mesh.url(), id);
        cfg.nats_creds = mesh.gateway_creds();
        tweak(&mut cfg);
        let client = mesh.gateway_client().await;
        Self::run(client, cfg, id)
    }

    /// Starts a replica on `mesh` that serves `/metrics`, `/healthz` and `/readyz` on a free
    /// port of 127.0.0.1; returns it with the address.
    pub async fn start_observed(mesh: &crate::Mesh, id: &str) -> (Self, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("bound address");
        let mut cfg = test_config(&mesh.url(), id);
        cfg.nats_creds = mesh.gateway_creds();
        let client = mesh.gateway_client().await;
        (Self::run_on(client, cfg, id, Some(listener)), addr)
    }

    fn run(client: async_nats::Client, cfg: GatewayConfig, id: &str) -> Self {
        Self::run_on(client, cfg, id, None)
    }

    fn run_on(
        client: async_nats::Client,
        cfg: GatewayConfig,
        id: &str,
        listener: Option<tokio::net::TcpListener>,
    ) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            mesh_gateway::run_with_listener(client, cfg, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("gateway runs");
        });
        GatewayTask {
            id: id.to_string(),
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Drains and stops the replica, waiting until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("gateway task ends cleanly");
        }
    }
}

impl Drop for GatewayTask {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// A replica running as a real `mesh-gateway` process.
pub struct GatewayProcess {
    pub id: String,
    child: Child,
}

impl GatewayProcess {
    /// Starts `mesh-gateway` against an open server at `url` with the test settings, as
    /// environment variables.
    pub fn start(url: &str, id: &str) -> Self {
        Self::spawn(url, None, id, &[], false).0
    }

    /// Like [`GatewayProcess::start`], with more `MESH_*` variables (e.g. `MESH_REPLICAS`).
    pub fn start_with(url: &str, id: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(url, None, id, env, false).0
    }

    /// Starts `mesh-gateway` on `mesh` with the gateways' credentials.
    pub fn start_in(mesh: &crate::Mesh, id: &str) -> Self {
        Self::spawn(&mesh.url(), mesh.gateway_creds(), id, &[], false).0
    }

    /// Starts `mesh-gateway` on `mesh` with `--metrics-addr 127.0.0.1:0`; returns it with the
    /// address it bound, read from its log line (so no port is guessed or fixed).
    pub fn start_observed_in(mesh: &crate::Mesh, id: &str) -> (Self, std::net::SocketAddr) {
        let (gw, addr) = Self::spawn(&mesh.url(), mesh.gateway_creds(), id, &[], true);
        let addr = addr
            .expect("a listener")
            .recv_timeout(crate::DEADLINE)
            .expect("mesh-gateway logs the metrics address");
        (gw, addr)
    }

    fn spawn(
        url: &str,
        creds: Option<PathBuf>,
        id: &str,
        env: &[(&str, &str)],
        observed: bool,
    ) -> (
        Self,
        Option<std::sync::mpsc::Receiver<std::net::SocketAddr>>,
    ) {
        let cfg = test_config(url, id);
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut cmd = Command::new(gateway_binary());
        if let Some(creds) = creds {
            cmd.env("MESH_NATS_CREDS", creds);
        }
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        if observed {
            cmd.arg("--metrics-addr")
                .arg("127.0.0.1:0")
                .env("RUST_LOG", format!("{log},mesh_gateway=info"))
                .env("NO_COLOR", "1")
                .stderr(Stdio::piped());
        } else {
            cmd.env("RUST_LOG", log)
                .env("NO_COLOR", "1")
                .stderr(Stdio::piped());
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .arg("--nats-url")
            .arg(url)
            .arg("--gateway-id")
            .arg(id)
            .env("MESH_REQUEST_TIMEOUT", ms(cfg.request_timeout))
            .env("MESH_ACK_WAIT", ms(cfg.ack_wait))
            .env("MESH_PIN_TIMEOUT", ms(cfg.pin_timeout))
            .env("MESH_MAX_RETRY_BACKOFF", ms(cfg.max_retry_backoff))
            .env("MESH_DRAIN_GRACE", ms(cfg.drain_grace))
            .env("MESH_PRESENCE_INTERVAL", ms(cfg.presence_interval))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn mesh-gateway");
        let stderr = child.stderr.take().expect("mesh-gateway's stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let who = id.to_string();
        std::thread::spawn(move || forward_log(stderr, &who, observed, tx));
        let addr = observed.then_some(rx);
        let gw = GatewayProcess {
            id: id.to_string(),
            child,
        };
        (gw, addr)
    }

    /// The exit status if the process has ended, `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("poll mesh-gateway")
    }

    /// SIGKILL: a crash, no drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the drain to finish; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for mesh-gateway")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Passes a gateway's log through to stderr, each line prefixed with the replica's id (except an
/// observed gateway's info lines, turned on only for the metrics address), and sends the metrics
/// address it logs.
fn forward_log(
    stderr: std::process::ChildStderr,
    id: &str,
    observed: bool,
    tx: std::sync::mpsc::Sender<std::net::SocketAddr>,
) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("serving /metrics") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr=")?.parse().ok());
            if let Some(addr) = addr {
                let _ = tx.send(addr);
            }
        } else if !observed || !line.contains(" INFO ") {
            // Prefixed with the replica, so that the logs of several gateways in one test
            // (and of several tests) can be told apart.
            eprintln!("[{id}] {line}");
        }
    }
}

/// The `mesh-gateway` binary of this workspace, built on first use if `cargo test` has not.
pub fn gateway_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| mesh_testkit::workspace_binary("mesh-gateway"))
        .clone()
}

/// The `mesh-cli` binary of this workspace, built on first use.
pub fn cli_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| mesh_testkit::workspace_binary("mesh-cli"))
        .clone()
}

/// Waits until exactly the replicas `ids` are live in `mesh-gateways`.
pub async fn wait_live(client: &async_nats::Client, ids: &[&str]) {
    let js = async_nats::jetstream::new(client.clone());
    crate::eventually(&format!("gateways {ids:?} live"), || {
        let js = js.clone();
        async move {
            let Ok(kv) = js.get_key_value("mesh-gateways").await else {
                return false;
            };
            let live = live_gateways(&kv).await;
            let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            want.sort();
            live == want
        }
    })
    .await;
}

/// Ids of live replicas, sorted.
pub async fn live_gateways(kv: &async_nats::jetstream::kv::Store) -> Vec<String> {
    let now = mesh_schemas::now_unix_ms();
    let mut out = Vec::new();
    let Ok(mut keys) = kv.keys().await else {
        return out;
    };
    while let Some(Ok(key)) = keys.next().await {
        if let Ok(Some(v)) = kv.get(&key).await {
            if let Ok(p) = decode::<GatewayPresence>(&v) {
                if p.is_live(now) {
                    out.push(p.id);
                }
            }
        }
    }
    out.sort();
    out
}
