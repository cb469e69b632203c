//! Local processes for `mesh-cli up`: finding `nats-server` and `mesh-gateway`, starting them in
//! their own process group (so Ctrl-C reaches mesh-cli only and it can stop them in order), and
//! stopping them gracefully.
//!
//! `nats-server` is looked up in `MESH_NATS_SERVER`, then `<repo>/.nats/<version>/bin/nats-server`
//! (newest version first; `<repo>` is any ancestor of the current directory or of mesh-cli's own
//! location that has a `.nats` dir, which `scripts/install-nats` fills), then `PATH`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long nats-server gets to write its ports file.
pub const NATS_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a local process could not be found or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    #[error("MESH_NATS_SERVER is {} but there is no file there; fix it or unset it", path.display())]
    EnvBinaryMissing { path: PathBuf },
    #[error(
        "no nats-server found (looked at MESH_NATS_SERVER, .nats/*/bin/nats-server under {roots}, \
         and PATH); run scripts/install-nats to install one under .nats/, or set \
         MESH_NATS_SERVER to its path"
    )]
    NatsNotFound { roots: String },
    #[error(
        "mesh-gateway not found next to mesh-cli (looked for {}); build it with cargo build --bins",
        path.display()
    )]
    GatewayNotFound { path: PathBuf },
    #[error("could not {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} exited ({status}) before it was ready; its log is {}{tail}", log.display())]
    Exited {
        name: &'static str,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} was not ready within {}s; its log is {}", timeout.as_secs(), log.display())]
    NotReady {
        name: &'static str,
        timeout: Duration,
        log: PathBuf,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// Finds `nats-server` (see the module docs for the order).
pub fn find_nats_server(
    env: &HashMap<String, String>,
    roots: &[PathBuf],
) -> Result<PathBuf, LocalError> {
    if let Some(path) = env.get("MESH_NATS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LocalError::EnvBinaryMissing { path })
        };
    }
    for root in roots {
        if let Some(found) = newest_installed(&root.join(".nats")) {
            return Ok(found);
        }
    }
    if let Some(path) = env.get("PATH") {
        for dir in std::env::split_paths(path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(LocalError::NatsNotFound {
        roots: roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// `<dir>/<version>/bin/nats-server` with the highest version, if any.
fn newest_installed(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let bin = e.path().join("bin").join("nats-server");
            bin.is_file()
                .then(|| (version_key(&e.file_name().to_string_lossy()), bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// `"2.15.1"` → `[2, 15, 1]`; a part that is not a number counts as 0.
fn version_key(name: &str) -> Vec<u64> {
    name.trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// Where to look for `.nats`: the current directory, mesh-cli's directory, and their ancestors.
pub fn search_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    ];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            if dir.join(".nats").is_dir() && !roots.iter().any(|r| r == dir) {
                roots.push(dir.to_path_buf());
            }
        }
    }
    roots
}

/// `mesh-gateway` in the directory of the running mesh-cli.
pub fn find_gateway() -> Result<PathBuf, LocalError> {
    let exe = std::env::current_exe().map_err(io_err("find mesh-cli's own location"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let path = dir.join("mesh-gateway");
    if path.is_file() {
        Ok(path)
    } else {
        Err(LocalError::GatewayNotFound { path })
    }
}

/// A child process mesh-cli started; killed if dropped while running.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    /// Where its output goes.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` in its own process group with stdout and stderr appended to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Proc, LocalError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(format!("create the log file {}", log.display())))?;
        let err_file = file
            .try_clone()
            .map_err(io_err(format!("open the log file {}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(io_err(format!("start {name}")))?;
        Ok(Proc { name, child, log })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until it exits.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// The error for a process that exited early, with the end of its log.
    pub fn exited_error(&self, status: ExitStatus) -> LocalError {
        LocalError::Exited {
            name: self.name,
            status,
            log: self.log.clone(),
            tail: log_tail(&self.log),
        }
    }

    /// SIGKILL, as in a crash: nothing is flushed. Waits until it is gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        let Some(pid) = self.child.id() else { return };
        let termed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed && tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(name = self.name, pid, "did not stop in time; killing it");
        let _ = self.child.kill().await;
    }
}

/// The last lines of a log, prefixed for an error message; empty when there are none.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!("; it ends with: {}", tail.join(" | "))
}

/// Starts `nats-server` with JetStream on 127.0.0.1 (`port`, or a free one), storing in
/// `<dir>/store` and logging to `<dir>/nats-server.log`; returns it with its client URL.
/// `conf` is a config file (a secured mesh's identity); flags win over it.
pub async fn start_nats(
    binary: &Path,
    dir: &Path,
    port: Option<u16>,
    conf: Option<&Path>,
) -> Result<(Proc, String), LocalError> {
    start_server(binary, dir, port, conf, "mesh-up", None).await
}

/// One node of a local JetStream cluster (`mesh-cli demo --cluster`): its name, its directory
/// (store, log, config), and the cluster ports of every node, its own at `index`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub name: String,
    pub dir: PathBuf,
    pub index: usize,
    pub cluster_ports: Vec<u16>,
}

impl ClusterNode {
    /// `size` nodes named `n1`, `n2`, … under `dir`, on cluster ports free right now.
    pub fn plan(dir: &Path, size: usize) -> Result<Vec<ClusterNode>, LocalError> {
        // Bound together so that no two are the same; released just before the nodes start.
        let listeners = (0..size)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<io::Result<Vec<_>>>()
            .map_err(io_err("reserve cluster ports on 127.0.0.1"))?;
        let cluster_ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(io_err("read a reserved cluster port"))?;
        Ok((0..size)
            .map(|index| ClusterNode {
                name: format!("n{}", index + 1),
                dir: dir.join(format!("n{}", index + 1)),
                index,
                cluster_ports: cluster_ports.clone(),
            })
            .collect())
    }

    /// Starts the node (again, on client port `port` when given, with the store it had) and
    /// returns it with its client URL, as [`start_nats`] does.
    pub async fn start(
        &self,
        binary: &Path,
        port: Option<u16>,
        conf: Option<&Path>,
    ) -> Result<(Proc, String), LocalError> {
        // A SIGKILLed server leaves its ports file; a stale one would pass for the new one.
        let _ = std::fs::remove_dir_all(self.dir.join("ports"));
        start_server(binary, &self.dir, port, conf, &self.name, Some(self)).await
    }
}

async fn start_server(
    binary: &Path,
    dir: &Path,
    port: Option<u16>,
    conf: Option<&Path>,
    name: &str,
    node: Option<&ClusterNode>,
) -> Result<(Proc, String), LocalError> {
    let store = dir.join("store");
    let ports = dir.join("ports");
    for d in [&store, &ports] {
        std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
    }
    let log = dir.join("nats-server.log");
    let port = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
    let mut cmd = Command::new(binary);
    if let Some(conf) = conf {
        cmd.arg("-c").arg(conf);
    }
    cmd.arg("-js")
        .args(["-a", "127.0.0.1", "-p", &port, "-n", name])
        .arg("-sd")
        .arg(&store)
        .arg("--ports_file_dir")
        .arg(&ports);
    if let Some(node) = node {
        let routes: Vec<String> = node
            .cluster_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        cmd.args(["--cluster_name", "mesh-demo", "--cluster"])
            .arg(format!(
                "nats://127.0.0.1:{}",
                node.cluster_ports[node.index]
            ))
            .arg("--routes")
            .arg(routes.join(","));
    }
    let mut proc = Proc::spawn("nats-server", cmd, log)?;
    let deadline = Instant::now() + NATS_START_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            return Err(proc.exited_error(status));
        }
        if let Some(url) = read_ports_file(&ports) {
            return Ok((proc, url));
        }
        if Instant::now() >= deadline {
            return Err(LocalError::NotReady {
                name: "nats-server",
                timeout: NATS_START_TIMEOUT,
                log: proc.log.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The client URL from the `*.ports` file nats-server writes once it listens.
fn read_ports_file(dir: &Path) -> Option<String> {
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "ports") {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            return value
                .get("nats")?
                .as_array()?
                .first()?
                .as_str()
                .map(str::to_string);
        }
    }
    None
}

/// A secured local mesh's identities: the auth directory in `<dir>/auth` (kept and reused when
/// `dir` is) and the server config for it in `<dir>/nats-server.conf`.
pub struct LocalAuth {
    pub auth: mesh_auth::AuthDir,
    pub conf: PathBuf,
}

impl LocalAuth {
    /// Creates (or reopens) the identities for a local server storing under `dir`.
    pub fn prepare(dir: &Path, prefix: &str) -> Result<LocalAuth, mesh_auth::AuthError> {
        let auth = mesh_auth::AuthDir::open_or_init(&dir.join("auth"), prefix)?;
        let conf = dir.join("nats-server.conf");
        let text = auth.server_config(&dir.join("jwt"))?;
        std::fs::write(&conf, text).map_err(|source| mesh_auth::AuthError::Io {
            action: "write",
            path: conf.clone(),
            source,
        })?;
        Ok(LocalAuth { auth, conf })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            version_key("2.9.0"),
            version_key("2.15.1"),
            version_key("2.11.11"),
        ];
        v.sort();
        assert_eq!(v.last(), Some(&vec![2, 15, 1]));
    }

    #[test]
    fn finds_the_newest_installed_server_then_path() {
        let root = tempfile::tempdir().expect("temp dir");
        for version in ["2.11.11", "2.15.1", "2.9.3"] {
            let bin = root.path().join(".nats").join(version).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            std::fs::write(bin.join("nats-server"), "").expect("write");
        }
        let env = HashMap::new();
        let found = find_nats_server(&env, &[root.path().to_path_buf()]).expect("found");
        assert!(found.ends_with(".nats/2.15.1/bin/nats-server"), "{found:?}");

        let path_dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(path_dir.path().join("nats-server"), "").expect("write");
        let env: HashMap<String, String> =
            [("PATH".to_string(), path_dir.path().display().to_string())].into();
        let found = find_nats_server(&env, &[]).expect("found on PATH");
        assert_eq!(found, path_dir.path().join("nats-server"));

        let err = find_nats_server(&HashMap::new(), &[]).expect_err("nothing anywhere");
        assert!(matches!(err, LocalError::NatsNotFound { .. }));
        assert!(err.to_string().contains("scripts/install-nats"));

        let env: HashMap<String, String> =
            [("MESH_NATS_SERVER".to_string(), "/no/such/file".to_string())].into();
        assert!(matches!(
            find_nats_server(&env, &[root.path().to_path_buf()]),
            Err(LocalError::EnvBinaryMissing { .. })
        ));
    }

    #[test]
    fn reads_the_ports_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read_ports_file(dir.path()), None);
        std::fs::write(
            dir.path().join("nats-server_42.ports"),
            r#"{"nats":["nats://127.0.0.1:4333"],"monitoring":["http://127.0.0.1:8222"]}"#,
        )
        .expect("write");
        assert_eq!(
            read_ports_file(dir.path()).as_deref(),
            Some("nats://127.0.0.1:4333")
        );
    }
}
