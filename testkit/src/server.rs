//! [`NatsServer`]: one `nats-server` with JetStream, a free port and its own store dir.
//!
//! The server keeps its ports and store dir for its whole life, so `restart` brings back the
//! same address and the same data. Everything lives in one temp dir (config, store, log, ports
//! file) that is deleted on drop, after the process is killed.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tempfile::TempDir;

use crate::cluster::{reserve_ports, PORT_ATTEMPTS};
use crate::probe::Ports;
use crate::process::{Launch, Proc};
use crate::{nats_server_binary, HarnessError};

/// The config of [`NatsServer::start`]: JetStream on, everything else from the command line.
const DEFAULT_CONF: &str = "# written by mesh-testkit; ports, store dir and log are flags\n\
                            jetstream: enabled\n";

/// A running (or stopped) `nats-server` owned by a test.
///
/// All methods take `&self`, so a server can be shared (`Arc<NatsServer>`) between tasks.
/// Lifecycle calls block the calling thread until the server is up or down (well under a second
/// on a quiet machine); calling them from a `#[tokio::test]` is fine.
pub struct NatsServer {
    /// How to start this server again: binary, config, dirs, readiness check.
    launch: Launch,
    /// Client and monitoring ports, chosen on the first start and kept by restarts.
    ports: Ports,
    /// The port of the `leafnodes { listen }` block, for a hub started with
    /// [`NatsServer::start_hub_with_conf`]; fixed in the config, so restarts keep it.
    leafnode_port: Option<u16>,
    /// The process, `None` while stopped.
    proc: Mutex<Option<Proc>>,
    /// Owns config, store, log and ports file; declared last so it is deleted after the
    /// process has been killed.
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a single server with JetStream on a free port.
    ///
    /// # Panics
    /// When no nats-server can be found or it does not start; the message says why.
    pub fn start() -> NatsServer {
        Self::try_start().unwrap_or_else(|e| panic!("mesh-testkit: {e}"))
    }

    /// Like [`NatsServer::start`], returning the error instead of panicking.
    pub fn try_start() -> Result<NatsServer, HarnessError> {
        Self::try_start_with_conf(DEFAULT_CONF)
    }

    /// Starts a single server with a config of your own.
    ///
    /// The harness still owns the listen address and client port, the monitoring port, the
    /// ports file and the log (it sets them as flags, which override the file), and it sets the
    /// store dir unless the text sets `store_dir` itself. JetStream is on only if the text
    /// turns it on (`jetstream: enabled` or a `jetstream { }` block).
    ///
    /// # Panics
    /// When no nats-server can be found or it does not start (e.g. the config is invalid).
    pub fn start_with_conf(conf: &str) -> NatsServer {
        Self::try_start_with_conf(conf).unwrap_or_else(|e| panic!("mesh-testkit: {e}"))
    }

    /// Like [`NatsServer::start_with_conf`], returning the error instead of panicking.
    pub fn try_start_with_conf(conf: &str) -> Result<NatsServer, HarnessError> {
        let dir = new_dir("nats")?;
        let launch = Launch::new("nats", nats_server_binary()?, dir.path(), conf, "/healthz")?;
        let (proc, ports) = launch.start(None, false)?;
        Ok(Self::assemble(launch, dir, proc, ports))
    }

    /// Starts a hub for leaf nodes: `conf` plus a `leafnodes { listen }` block on a free port
    /// of 127.0.0.1 (see [`NatsServer::leafnode_port`] and [`crate::LeafNode`]). Leaf nodes
    /// authenticate as users of the hub's config, e.g. with credentials of its accounts.
    ///
    /// # Panics
    /// When no nats-server can be found or it does not start (e.g. the config is invalid).
    pub fn start_hub_with_conf(conf: &str) -> NatsServer {
        Self::try_start_hub_with_conf(conf).unwrap_or_else(|e| panic!("mesh-testkit: hub: {e}"))
    }

    /// Like [`NatsServer::start_hub_with_conf`], returning the error instead of panicking.
    pub fn try_start_hub_with_conf(conf: &str) -> Result<NatsServer, HarnessError> {
        // The port must be written into the config, so it is reserved and released first;
        // another process may take it meanwhile, then the hub starts again on a new one.
        let mut attempt = 1;
        loop {
            let port = reserve_ports(1)?[0];
            let conf = format!(
                "{conf}\n# leaf nodes (regions) connect here; written by mesh-testkit\n\
                 leafnodes {{\n  listen: \"127.0.0.1:{port}\"\n}}\n"
            );
            match Self::try_start_with_conf(&conf) {
                Err(HarnessError::PortInUse { .. }) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
                Ok(mut server) => {
                    server.leafnode_port = Some(port);
                    return Ok(server);
                }
            }
        }
    }

    /// Wraps a started process; the cluster starts its nodes in parallel and then calls this.
    pub(crate) fn assemble(launch: Launch, dir: TempDir, proc: Proc, ports: Ports) -> NatsServer {
        NatsServer {
            launch,
            ports,
            leafnode_port: None,
            proc: Mutex::new(Some(proc)),
            _dir: dir,
        }
    }

    /// Records the `leafnodes { listen }` port written into a cluster node's config.
    pub(crate) fn set_leafnode_port(&mut self, port: Option<u16>) {
        self.leafnode_port = port;
    }

    /// How many leaf node connections this server reports on `/leafz`; `None` while it does
    /// not answer.
    pub fn leaf_count(&self) -> Option<usize> {
        crate::probe::leaf_count(self.monitor_port())
    }

    /// The port leaf nodes connect to, for a server started with
    /// [`NatsServer::start_hub_with_conf`] or a node of [`crate::Cluster::start_hub`]; `None`
    /// otherwise.
    pub fn leafnode_port(&self) -> Option<u16> {
        self.leafnode_port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    /// The client port; the same after every restart.
    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// `http://127.0.0.1:<monitoring port>`, for `/varz`, `/jsz`, `/healthz`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.monitor)
    }

    /// The monitoring port.
    pub(crate) fn monitor_port(&self) -> u16 {
        self.ports.monitor
    }

    /// `nats` for a single server, `n1`, `n2`, ... for cluster nodes (their `server_name`).
    pub fn name(&self) -> &str {
        &self.launch.name
    }

    /// The JetStream store dir (nats-server keeps its data under `<dir>/jetstream`).
    pub fn store_dir(&self) -> &Path {
        &self.launch.store
    }

    /// The server's log file: every run of this server appends to it.
    pub fn log_path(&self) -> &Path {
        &self.launch.log
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.launch.binary
    }

    /// The process id, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        let mut slot = self.proc();
        let proc = slot.as_mut()?;
        proc.is_running().then(|| proc.pid())
    }

    /// Whether the process runs (it may have been stopped, killed, or crashed).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Stops the server if it runs, then starts it again on the same ports with the same store
    /// dir, and waits until it is ready. Also starts a stopped or killed server.
    ///
    /// # Panics
    /// When the server does not come back; the message carries its log.
    pub fn restart(&self) {
        self.try_restart()
            .unwrap_or_else(|e| panic!("mesh-testkit: restart failed: {e}"));
    }

    /// Like [`NatsServer::restart`], returning the error instead of panicking.
    pub fn try_restart(&self) -> Result<(), HarnessError> {
        let mut slot = self.proc();
        if let Some(proc) = slot.take() {
            proc.stop(&self.launch.binary);
        }
        let (proc, _) = self.launch.start(Some(self.ports), true)?;
        *slot = Some(proc);
        Ok(())
    }

    /// Graceful stop (SIGTERM, as an operator would), waiting until the process has exited.
    /// JetStream flushes its state on the way down.
    pub fn stop(&self) {
        if let Some(proc) = self.proc().take() {
            proc.stop(&self.launch.binary);
        }
    }

    /// SIGKILL, as in a crash or a power cut: nothing is flushed. Waits until the process is gone.
    pub fn kill(&self) {
        drop(self.proc().take());
    }

    fn proc(&self) -> MutexGuard<'_, Option<Proc>> {
        self.proc.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Kill before the temp dir (a later field) is deleted.
        self.kill();
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("name", &self.launch.name)
            .field("url", &self.url())
            .field("monitor", &self.monitor_url())
            .field("store", &self.launch.store)
            .finish_non_exhaustive()
    }
}

/// A fresh temp dir for one server, named so a leftover one is recognisable.
pub(crate) fn new_dir(name: &str) -> Result<TempDir, HarnessError> {
    tempfile::Builder::new()
        .prefix(&format!("mesh-testkit-{name}-"))
        .tempdir()
        .map_err(|e| HarnessError::io("create a temp dir for nats-server", e))
}
