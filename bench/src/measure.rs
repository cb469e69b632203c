//! One measured run against whatever delivers (the baseline relay or the gateway): publish at a
//! pace, let it settle, count what the agents receive in a window, then drain so that the next
//! run starts with nothing in flight. Plus percentiles and a bounded wait.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::agents::Agents;
use crate::load::{Pace, Publisher, Sent};

/// What one window measured.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Intents received by the agents per second during the window.
    pub delivered_per_s: f64,
    /// Intents received during the window.
    pub delivered: u64,
    /// What the publisher did over warm-up and window.
    pub sent: Sent,
    /// Trip times (µs) recorded during the window, when asked for.
    pub trips: Vec<u32>,
    /// Intents stored but not received once the drain deadline passed.
    pub undelivered: u64,
    /// CPU seconds each watched process used during the window.
    pub cpu: Vec<(String, f64)>,
    /// Messages nats-server received and sent during the window (from `/varz`; summed over
    /// the nodes of a cluster).
    pub nats_msgs: Option<u64>,
    /// Length of the window, seconds.
    pub seconds: f64,
}

impl Window {
    /// CPU seconds of the watched processes called `name` (the nodes of a cluster are all
    /// `nats`), summed.
    fn cpu_secs(&self, name: &str) -> Option<f64> {
        let mut named = self.cpu.iter().filter(|(n, _)| n == name).peekable();
        named.peek()?;
        Some(named.map(|(_, secs)| secs).sum())
    }

    /// CPU microseconds per delivered intent of the watched process(es) `name`.
    pub fn cpu_us_per_intent(&self, name: &str) -> Option<f64> {
        let secs = self.cpu_secs(name)?;
        (self.delivered > 0).then(|| secs * 1e6 / self.delivered as f64)
    }

    /// Messages through nats-server (in + out) per delivered intent.
    pub fn nats_msgs_per_intent(&self) -> Option<f64> {
        let m = self.nats_msgs?;
        (self.delivered > 0).then(|| m as f64 / self.delivered as f64)
    }

    /// Share of one core that process `name` used during the window (1.0 = a whole core).
    pub fn cpu_cores(&self, name: &str) -> Option<f64> {
        let secs = self.cpu_secs(name)?;
        (self.seconds > 0.0).then(|| secs / self.seconds)
    }
}

/// How to run one window.
#[derive(Clone)]
pub struct Spec<'a> {
    pub pace: Pace<'a>,
    /// Publishing before the window opens.
    pub warmup: Duration,
    /// The window.
    pub measure: Duration,
    /// Record trip times during the window.
    pub timing: bool,
    /// How long to wait after publishing for everything stored to be received.
    pub drain: Duration,
    /// Processes whose CPU time to account for during the window: (name, pid). Processes of
    /// the same name (the nodes of a cluster) are summed.
    pub watch: Vec<(String, u32)>,
    /// nats-server's monitoring addresses (`127.0.0.1:<port>`, one per node), to count messages
    /// via `/varz`.
    pub monitor: Vec<String>,
    /// With `--perf`: record the watched processes during the window into
    /// `<dir>/<label>-<name>.perf.data`.
    pub perf: Option<(PathBuf, String)>,
}

/// Publishes at `spec.pace` for `warmup + measure`, counting receipts (and CPU time of the
/// watched processes) during the last `measure`; records trip times in that window when asked;
/// then waits up to `drain` for the agents to receive everything that was stored.
pub async fn window(publisher: &mut Publisher, agents: &Agents, spec: Spec<'_>) -> Window {
    let before = agents.received();
    let until = Instant::now() + spec.warmup + spec.measure;
    let cpu_now = |watch: &[(String, u32)]| -> Vec<Option<u64>> {
        watch.iter().map(|(_, pid)| cpu_ns(*pid)).collect()
    };
    let (sent, (delivered, seconds, trips, cpu, nats_msgs)) =
        tokio::join!(publisher.run(spec.pace, until, None), async {
            tokio::time::sleep(spec.warmup).await;
            if spec.timing {
                agents.take_trips();
                agents.timing(true);
            }
            let m0 = varz_msgs_all(&spec.monitor).await;
            let (r0, t0, c0) = (agents.received(), Instant::now(), cpu_now(&spec.watch));
            let perf: Vec<tokio::process::Child> = match &spec.perf {
                Some((dir, label)) => spec
                    .watch
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (name, pid))| {
                        // The nodes of a cluster share a name: number all but the first.
                        let n = spec.watch[..i].iter().filter(|(o, _)| o == name).count();
                        let file = if n == 0 {
                            format!("{label}-{name}")
                        } else {
                            format!("{label}-{name}{n}")
                        };
                        perf_record(dir, &file, *pid, spec.measure)
                    })
                    .collect(),
                None => Vec::new(),
            };
            tokio::time::sleep(spec.measure).await;
            let (r1, t1, c1) = (agents.received(), Instant::now(), cpu_now(&spec.watch));
            let m1 = varz_msgs_all(&spec.monitor).await;
            let msgs = m0.zip(m1).map(|(a, b)| b.saturating_sub(a));
            agents.timing(false);
            let cpu: Vec<(String, f64)> = spec
                .watch
                .iter()
                .zip(c0.iter().zip(&c1))
                .filter_map(|((name, _), (a, b))| {
                    Some((
                        name.clone(),
                        b.as_ref()?.saturating_sub(*a.as_ref()?) as f64 / 1e9,
                    ))
                })
                .collect();
            let trips = if spec.timing {
                agents.take_trips()
            } else {
                Vec::new()
            };
            for mut p in perf {
                // perf ends with its `sleep`; writing the file may take a moment.
                if tokio::time::timeout(Duration::from_secs(60), p.wait())
                    .await
                    .is_err()
                {
                    let _ = p.kill().await;
                }
            }
            (r1 - r0, (t1 - t0).as_secs_f64().max(1e-9), trips, cpu, msgs)
        });
    let target = before + sent.stored;
    let reached = wait_until(spec.drain, || agents.received() >= target).await;
    let undelivered = if reached {
        0
    } else {
        target.saturating_sub(agents.received())
    };
    Window {
        delivered_per_s: delivered as f64 / seconds,
        delivered,
        sent,
        trips,
        undelivered,
        cpu,
        nats_msgs,
        seconds,
    }
}

/// [`varz_msgs`] summed over `addrs`; `None` when there are none or one is unreadable.
async fn varz_msgs_all(addrs: &[String]) -> Option<u64> {
    if addrs.is_empty() {
        return None;
    }
    let mut total = 0;
    for addr in addrs {
        total += varz_msgs(addr).await?;
    }
    Some(total)
}

/// `in_msgs + out_msgs` from nats-server's `/varz` at `addr`; `None` when unreadable.
pub async fn varz_msgs(addr: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        conn.read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8_lossy(&body);
        let json = text.split_once("\r\n\r\n")?.1;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        Some(v.get("in_msgs")?.as_u64()? + v.get("out_msgs")?.as_u64()?)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

/// `perf record` of process `pid` for `secs`: cpu-clock samples (hardware counters may be
/// missing on a virtual machine) with DWARF call graphs, into `<dir>/<name>.perf.data`.
/// `None` (and a warning) when perf cannot start.
fn perf_record(dir: &Path, name: &str, pid: u32, secs: Duration) -> Option<tokio::process::Child> {
    std::fs::create_dir_all(dir).ok()?;
    let child = tokio::process::Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "999"])
        .args(["--call-graph", "dwarf,16384", "-o"])
        .arg(dir.join(format!("{name}.perf.data")))
        .arg("-p")
        .arg(pid.to_string())
        .arg("--")
        .arg("sleep")
        .arg(format!("{:.3}", secs.as_secs_f64()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start perf record");
            None
        }
    }
}

/// CPU time (ns) used so far by every thread of process `pid`, from `/proc/<pid>/task/*/schedstat`.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// Polls `cond` every 2 ms until it holds (true) or `within` passes (false).
pub async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `p`-th percentile (0–100) of `samples`, nearest rank; `None` when empty. Sorts in place.
pub fn percentile(samples: &mut [u32], p: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// Microseconds as milliseconds.
pub fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

/// The median of a few figures (the middle one, or the mean of the two middle ones).
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut xs: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&mut xs, 50.0), Some(50));
        assert_eq!(percentile(&mut xs, 99.0), Some(99));
        assert_eq!(percentile(&mut xs, 100.0), Some(100));
        assert_eq!(percentile(&mut [], 50.0), None);
        assert_eq!(percentile(&mut [7], 99.0), Some(7));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
