//! One `nats-server` process: the command line the harness owns, spawning, waiting until it is
//! ready, and stopping it.
//!
//! The harness always sets the listen address (loopback), the client and monitoring ports
//! (`-1` on the first start, so the kernel picks free ones; the same ports on a restart), the
//! store dir, the ports file dir and the log file on the command line; flags override the config
//! file. A server is ready when its ports file exists, its client port accepts connections and a
//! monitoring path answers 200. Nothing sleeps for a fixed time: every wait polls for an event
//! until a deadline.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe::{self, Ports};
use crate::HarnessError;

/// How long a server may take to become ready. Generous: CI machines are small and busy.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful stop may take before the harness kills the process.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How many lines of log and stderr an error carries.
const TAIL_LINES: usize = 40;

/// Everything needed to start one server again and again; fixed for the server's life.
pub(crate) struct Launch {
    /// Label in logs and errors: `nats`, or `n1`.. in a cluster.
    pub name: String,
    /// The `nats-server` binary.
    pub binary: PathBuf,
    /// The config file, written once when the server is created.
    pub conf: PathBuf,
    /// The JetStream store dir, kept across restarts.
    pub store: PathBuf,
    /// Whether the harness passes `--store_dir` (not when the config sets its own).
    pub store_flag: bool,
    /// Where the server writes `<exe>_<pid>.ports`.
    pub ports_dir: PathBuf,
    /// The server's log (`-l`), appended to by every run.
    pub log: PathBuf,
    /// stdout and stderr of every run: config errors land here before the log is open.
    pub output: PathBuf,
    /// The monitoring path that must answer 200 before the server counts as ready.
    pub health: &'static str,
}

/// A running child process, killed when dropped so no test leaves a server behind.
pub(crate) struct Proc {
    /// The process; `Drop` kills and reaps it.
    child: Child,
}

/// A process that was spawned but is not known to be ready yet.
pub(crate) struct Starting {
    /// The process.
    proc: Proc,
    /// Where this run's lines start in the log, so errors show only this run.
    log_from: u64,
    /// Where this run's lines start in the output file.
    output_from: u64,
}

impl Launch {
    /// Creates the server's directories under `dir` and writes its config file.
    pub(crate) fn new(
        name: &str,
        binary: PathBuf,
        dir: &Path,
        conf_text: &str,
        health: &'static str,
    ) -> Result<Launch, HarnessError> {
        let launch = Launch {
            name: name.to_owned(),
            binary,
            conf: dir.join("server.conf"),
            store: dir.join("store"),
            store_flag: !sets_store_dir(conf_text),
            ports_dir: dir.join("ports"),
            log: dir.join("nats-server.log"),
            output: dir.join("nats-server.out"),
            health,
        };
        for sub in [&launch.store, &launch.ports_dir] {
            fs::create_dir_all(sub)
                .map_err(|e| HarnessError::io(format!("create {}", sub.display()), e))?;
        }
        fs::write(&launch.conf, conf_text)
            .map_err(|e| HarnessError::io(format!("write {}", launch.conf.display()), e))?;
        Ok(launch)
    }

    /// Starts the server and waits until it is ready. `ports` pins the ports (a restart);
    /// `None` lets the server pick free ones. With `retry_busy`, a port held by another
    /// process is retried until the deadline (it may be a dying process releasing it).
    pub(crate) fn start(
        &self,
        ports: Option<Ports>,
        retry_busy: bool,
    ) -> Result<(Proc, Ports), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut backoff = Backoff::new();
        loop {
            let starting = self.spawn(ports)?;
            match self.wait_ready(starting, deadline) {
                Err(HarnessError::PortInUse { .. }) if retry_busy && Instant::now() < deadline => {
                    tracing::debug!(name = %self.name, "port busy, retrying");
                    backoff.wait();
                }
                other => return other,
            }
        }
    }

    /// Spawns the process without waiting for it.
    pub(crate) fn spawn(&self, ports: Option<Ports>) -> Result<Starting, HarnessError> {
        // A killed server leaves its ports file behind; a fresh dir means the file we find
        // later is the new process's.
        let _ = fs::remove_dir_all(&self.ports_dir);
        fs::create_dir_all(&self.ports_dir)
            .map_err(|e| HarnessError::io(format!("create {}", self.ports_dir.display()), e))?;
        let output = File::options()
            .create(true)
            .append(true)
            .open(&self.output)
            .map_err(|e| HarnessError::io(format!("open {}", self.output.display()), e))?;
        let output_err = output
            .try_clone()
            .map_err(|e| HarnessError::io("duplicate the output file handle", e))?;
        let (log_from, output_from) = (file_len(&self.log), file_len(&self.output));

        let port = |p: Option<u16>| p.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(&self.conf)
            .args(["-a", "127.0.0.1"])
            .args(["-p", &port(ports.map(|p| p.client))])
            .args(["-m", &port(ports.map(|p| p.monitor))])
            .arg("--ports_file_dir")
            .arg(&self.ports_dir)
            .arg("-l")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(output_err);
        if self.store_flag {
            cmd.arg("-sd").arg(&self.store);
        }
        let child = cmd.spawn().map_err(|e| {
            HarnessError::io(format!("{}: start {}", self.name, self.binary.display()), e)
        })?;
        tracing::debug!(name = %self.name, pid = child.id(), ?ports, "spawned nats-server");
        Ok(Starting {
            proc: Proc { child },
            log_from,
            output_from,
        })
    }

    /// Waits until the spawned process is ready; kills it if it is not by the deadline.
    pub(crate) fn wait_ready(
        &self,
        mut starting: Starting,
        deadline: Instant,
    ) -> Result<(Proc, Ports), HarnessError> {
        let pid = starting.proc.child.id();
        let mut backoff = Backoff::new();
        let mut waiting_for = "its ports file";
        loop {
            if let Ok(Some(status)) = starting.proc.child.try_wait() {
                let output = self.tail(&starting);
                let name = self.name.clone();
                return Err(if output.contains("address already in use") {
                    HarnessError::PortInUse { name, output }
                } else {
                    let status = status.to_string();
                    HarnessError::Exited {
                        name,
                        status,
                        output,
                    }
                });
            }
            if let Some(ports) = probe::read_ports_file(&self.ports_dir, pid) {
                waiting_for = "its client port to accept connections";
                if probe::accepts(ports.client) {
                    waiting_for = self.health;
                    if probe::healthy(ports.monitor, self.health) {
                        tracing::debug!(name = %self.name, pid, ?ports, "nats-server ready");
                        return Ok((starting.proc, ports));
                    }
                }
            }
            if Instant::now() >= deadline {
                let output = self.tail(&starting);
                return Err(HarnessError::NotReady {
                    name: self.name.clone(),
                    timeout: READY_TIMEOUT,
                    waiting_for: waiting_for.to_owned(),
                    output,
                });
            }
            backoff.wait();
        }
    }

    /// The last lines this run wrote to its log and to stdout/stderr.
    fn tail(&self, starting: &Starting) -> String {
        let log = tail_from(&self.log, starting.log_from);
        let output = tail_from(&self.output, starting.output_from);
        format!(
            "--- {} ---\n{log}\n--- stdout/stderr ---\n{output}",
            self.log.display()
        )
    }
}

impl Proc {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Graceful stop: SIGTERM (sent by `nats-server --signal`, so no libc is needed), then a
    /// kill if it has not exited after the grace period.
    pub(crate) fn stop(mut self, binary: &Path) {
        if !self.is_running() {
            return;
        }
        let sent = Command::new(binary)
            .arg("--signal")
            .arg(format!("term={}", self.pid()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if matches!(sent, Ok(status) if status.success()) {
            let deadline = Instant::now() + STOP_GRACE;
            let mut backoff = Backoff::new();
            while Instant::now() < deadline {
                if !self.is_running() {
                    return;
                }
                backoff.wait();
            }
            tracing::warn!(pid = self.pid(), "nats-server ignored SIGTERM; killing it");
        }
        // Drop kills.
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polling interval that starts short (most waits end within milliseconds) and grows.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(Duration::from_millis(5))
    }

    pub(crate) fn wait(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(100));
    }
}

/// Whether a config text sets the store dir itself (then `--store_dir` would be a duplicate).
fn sets_store_dir(conf_text: &str) -> bool {
    conf_text.lines().any(|line| {
        let line = line
            .split('#')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        line.contains("store_dir") || line.contains("storedir")
    })
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last [`TAIL_LINES`] lines of `path` from byte `from` on.
fn tail_from(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(from)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_store_dir_in_the_config() {
        assert!(sets_store_dir("jetstream {\n  store_dir: /x\n}"));
        assert!(sets_store_dir("jetstream { StoreDir: /x }"));
        assert!(!sets_store_dir("jetstream: enabled # no store_dir here"));
    }
}
