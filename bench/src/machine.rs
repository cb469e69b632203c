//! What the run ran on: cores, memory, CPU model, kernel and load, read from `/proc`.

use serde::Serialize;

/// The machine, as far as `/proc` tells.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Cores this process may use.
    pub nproc: usize,
    pub memory_gib: Option<f64>,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    /// 1, 5 and 15 minute load averages when the run started: how shared the machine was.
    pub load_average_start: Option<[f64; 3]>,
    /// One line: "2 cores, 23.4 GiB, AMD EPYC".
    pub summary: String,
}

impl Machine {
    pub fn read() -> Machine {
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let memory_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        });
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
            let line = c.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_string())
        });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string());
        let summary = format!(
            "{nproc} cores, {} GiB, {}",
            memory_gib.map(|m| m.to_string()).unwrap_or("?".into()),
            cpu_model.clone().unwrap_or("unknown CPU".into())
        );
        Machine {
            nproc,
            memory_gib,
            cpu_model,
            kernel,
            load_average_start: load_average(),
            summary,
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}
