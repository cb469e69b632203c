//! Child processes: gateway replicas and the baseline relay run as `mesh-bench child …`, each in
//! a process of its own on a current-thread runtime, as `mesh-gateway` runs in production. That
//! keeps the two sides of every comparison in the same shape (senders and agents here, the
//! deliverer in its own process) and gives honest RSS figures.
//!
//! A child stops when its stdin closes (the parent drops the pipe, or dies) or on SIGTERM, and
//! drains like `mesh-gateway`; the parent kills it if it has not exited within a grace period.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use mesh_auth::connect::GATEWAY_INBOX_PREFIX;
use mesh_gateway::GatewayConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;

use crate::Env;

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Memory {
    /// VmRSS, MiB.
    pub rss_mb: f64,
    /// VmHWM (peak RSS), MiB.
    pub peak_mb: f64,
}

/// The memory of process `pid`, if it is readable.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some(Memory {
        rss_mb: field("VmRSS:")?,
        peak_mb: field("VmHWM:")?,
    })
}

/// A running child.
pub struct ChildProc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<tokio::io::Lines<BufReader<ChildStdout>>>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl ChildProc {
    /// `mesh-bench child gateway --url URL --id ID`, with `vars` (`MESH_NATS_CREDS` on a
    /// secured server) added to its environment, where the gateway's configuration reads them.
    pub fn gateway(
        env: &Env,
        url: &str,
        id: &str,
        vars: &[(String, OsString)],
    ) -> anyhow::Result<ChildProc> {
        Self::spawn(env, id, &["gateway", "--url", url, "--id", id], vars)
    }

    /// `mesh-bench child relay --url URL …`, shaped by `shape` (see [`crate::relay::Shape`]);
    /// returns once the relay pulls.
    pub async fn relay_shaped(
        env: &Env,
        url: &str,
        shape: crate::relay::Shape,
    ) -> anyhow::Result<ChildProc> {
        let mut args = vec!["relay".to_string(), "--url".to_string(), url.to_string()];
        if let Some(n) = shape.per_recipient {
            args.extend(["--per-recipient".to_string(), n.to_string()]);
        }
        if shape.discovery {
            args.push("--discovery".to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut relay = Self::spawn(env, "relay", &args, &[])?;
        // Creating one consumer per agent takes about a millisecond each.
        let within = Duration::from_secs(30)
            + Duration::from_millis(5 * shape.per_recipient.unwrap_or(0) as u64);
        relay.wait_ready(within).await?;
        Ok(relay)
    }

    fn spawn(
        env: &Env,
        name: &str,
        args: &[&str],
        vars: &[(String, OsString)],
    ) -> anyhow::Result<ChildProc> {
        std::fs::create_dir_all(&env.log_dir)
            .with_context(|| format!("cannot create {}", env.log_dir.display()))?;
        let log = env.log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut child = tokio::process::Command::new(&env.exe)
            .arg("child")
            .args(args)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} child {name}", env.exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(|out| BufReader::new(out).lines());
        Ok(ChildProc {
            name: name.to_string(),
            child,
            stdin,
            stdout,
            log,
        })
    }

    /// Waits for the child's `ready` line.
    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let Some(lines) = self.stdout.as_mut() else {
            bail!("{} has no stdout", self.name);
        };
        match tokio::time::timeout(within, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.trim() == "ready" => Ok(()),
            Ok(Ok(other)) => bail!(
                "{} did not get ready (said {other:?}); see {}",
                self.name,
                self.log.display()
            ),
            Ok(Err(e)) => Err(e).context(format!("reading {}'s stdout", self.name)),
            Err(_) => bail!(
                "{} not ready within {within:?}; see {}",
                self.name,
                self.log.display()
            ),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the child has exited already (a crash, a refused configuration).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The child's memory now.
    pub fn memory(&self) -> Option<Memory> {
        memory(self.pid()?)
    }

    /// Closes the child's stdin (its stop signal) and waits up to `grace` for it to drain and
    /// exit; kills it after that (`Ok(false)`). Errors when it exited with a failure.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<bool> {
        drop(self.stdin.take());
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(true),
            Ok(Ok(status)) => bail!(
                "{} exited with {status}; see {}",
                self.name,
                self.log.display()
            ),
            Ok(Err(e)) => Err(e).context(format!("waiting for {}", self.name)),
            Err(_) => {
                let _ = self.child.kill().await;
                Ok(false)
            }
        }
    }
}

/// Waits until exactly the gateway replicas `ids` are live (their presence records are fresh);
/// fails early when one of `children` has exited.
pub async fn wait_live(
    gateways: &async_nats::jetstream::kv::Store,
    ids: &[String],
    children: &mut [ChildProc],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut want: Vec<String> = ids.to_vec();
    want.sort();
    loop {
        let live = mesh_cli::fence::live_replicas(gateways)
            .await
            .unwrap_or_default();
        if live == want {
            return Ok(());
        }
        for c in children.iter_mut() {
            if c.exited() {
                bail!("{} exited; see {}", c.name, c.log.display());
            }
        }
        if Instant::now() >= deadline {
            bail!("gateway replicas live: {live:?}; wanted {want:?} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolves when stdin reaches its end (the parent closed it or died) or on SIGTERM.
pub async fn stop_signal() {
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = term => {}
    }
}

/// Logs of a child go to its stderr (a file the parent chose); `RUST_LOG` selects, warn by
/// default.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The current-thread runtime every child uses, like `mesh-gateway`'s main.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `mesh-bench child gateway`: one gateway replica through [`mesh_gateway::run`], configured like
/// `mesh-gateway` (defaults, then `MESH_*` variables, `MESH_NATS_CREDS` among them), on `url`
/// with id `id`, connected like `mesh-gateway` (its credentials, its inbox prefix).
pub fn gateway_main(url: &str, id: &str) -> anyhow::Result<()> {
    init_tracing();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let mut cfg = GatewayConfig::load(None, env)?;
    cfg.nats_url = url.to_string();
    cfg.gateway_id = Some(id.to_string());
    let prepared = cfg
        .connection()
        .prepare(format!("mesh-bench gateway {id}"), GATEWAY_INBOX_PREFIX)?;
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let client = prepared
            .options
            .connect(prepared.servers)
            .await
            .with_context(|| format!("cannot connect to {}", prepared.shown_url))?;
        mesh_gateway::run(client, cfg, stop_signal()).await?;
        anyhow::Ok(())
    });
    // The stdin reader may still sit in a blocking read; do not wait for it.
    rt.shutdown_background();
    result
}

/// `mesh-bench child relay`: the baseline relay (see [`crate::relay`]).
pub fn relay_main(url: &str, shape: crate::relay::Shape) -> anyhow::Result<()> {
    init_tracing();
    let rt = runtime()?;
    let result = rt.block_on(crate::relay::run(url, shape, stop_signal()));
    rt.shutdown_background();
    result
}
