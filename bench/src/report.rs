//! The results: every figure under a stable key, the targets of issue 4, of the identity issue
//! and of issue 10 (the cluster) as met or missed, a table for people and a JSON file for scripts.
//!
//! Keys never change meaning. A figure that a run could not measure is `null`, with a note or an
//! error saying why. Scale keys name the agent count they were measured with (`rss_mb_10k_agents`
//! only exists with a value in a full run); a quick run fills the keys of its own, smaller counts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::machine::Machine;
use crate::Params;

/// A target of issue 4 or of the identity issue.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Target {
    /// What the issue says, in words.
    pub target: String,
    /// The key compared.
    pub key: String,
    /// `>=` or `<=`.
    pub op: &'static str,
    pub threshold: f64,
    pub value: Option<f64>,
    /// `None` when the figure is missing.
    pub met: Option<bool>,
}

impl Target {
    /// "met by 12 %", "missed by 0.21 (30 %)", "not measured".
    pub fn verdict(&self) -> String {
        let (Some(v), Some(met)) = (self.value, self.met) else {
            return "not measured".to_string();
        };
        let gap = (v - self.threshold).abs();
        let rel = if self.threshold != 0.0 {
            gap / self.threshold.abs() * 100.0
        } else {
            0.0
        };
        format!(
            "{} by {} ({rel:.0} %)",
            if met { "met" } else { "MISSED" },
            fmt_num(gap)
        )
    }
}

/// Everything a run produced.
pub struct Report {
    pub figures: BTreeMap<String, Value>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
    pub targets: Vec<Target>,
    meta: BTreeMap<String, Value>,
    params: Params,
}

impl Report {
    pub fn new(params: &Params, command: String) -> Report {
        let machine = Machine::read();
        let mut meta = BTreeMap::new();
        meta.insert("command".into(), json!(command));
        meta.insert("quick".into(), json!(params.quick));
        meta.insert("machine".into(), json!(machine));
        meta.insert(
            "nats_server_version".into(),
            json!(mesh_testkit::nats_server_version().ok()),
        );
        meta.insert("params".into(), json!(params));
        meta.insert("started_unix_ms".into(), json!(mesh_schemas::now_unix_ms()));
        Report {
            figures: BTreeMap::new(),
            notes: Vec::new(),
            errors: Vec::new(),
            targets: Vec::new(),
            meta,
            params: params.clone(),
        }
    }

    /// Sets a figure; `None` becomes `null`.
    pub fn set(&mut self, key: impl Into<String>, value: Option<f64>) {
        let v = value
            .filter(|v| v.is_finite())
            .map(|v| json!((v * 1000.0).round() / 1000.0))
            .unwrap_or(Value::Null);
        self.figures.insert(key.into(), v);
    }

    /// A figure, if it was measured.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.get(key).and_then(Value::as_f64)
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        crate::progress(format!("note: {note}"));
        self.notes.push(note);
    }

    pub fn error(&mut self, phase: &str, e: &anyhow::Error) {
        let line = format!("{phase}: {e:#}");
        crate::progress(format!("ERROR {line}"));
        self.errors.push(line);
    }

    /// Evaluates the targets and stamps the end of the run.
    pub fn finish(&mut self, took: Duration) {
        self.meta
            .insert("duration_s".into(), json!(took.as_secs_f64().round()));
        self.meta.insert(
            "load_average_end".into(),
            json!(crate::machine::load_average()),
        );
        let counts = &self.params.scale_agents;
        let small = counts.first().copied().unwrap_or(10);
        let large = counts.last().copied().unwrap_or(10_000);
        let t = |target: &str, key: String, op, threshold| Target {
            target: target.to_string(),
            key,
            op,
            threshold,
            value: None,
            met: None,
        };
        let mut targets = vec![
            t(
                "gateway throughput ≥ 0.7 × direct baseline",
                "throughput_ratio".into(),
                ">=",
                0.7,
            ),
            t(
                "gateway throughput ≥ 30,000 intents/s",
                "throughput_intents_per_s".into(),
                ">=",
                30_000.0,
            ),
            t(
                "added p99 latency ≤ 2 ms at half load",
                "added_latency_p99_ms".into(),
                "<=",
                2.0,
            ),
            t(
                "kill fence p99 ≤ 10 ms, 3 replicas, under load",
                "kill_fence_p99_ms".into(),
                "<=",
                10.0,
            ),
            t(
                "replay after resume ≥ 0.8 × steady throughput",
                "replay_ratio".into(),
                ">=",
                0.8,
            ),
            t(
                &format!("gateway RSS ≤ 200 MB with {} agents", count_label(large)),
                format!("rss_mb_{}_agents", count_key(large)),
                "<=",
                200.0,
            ),
            t(
                &format!(
                    "throughput with {} agents ≥ 0.8 × with {}",
                    count_label(large),
                    count_label(small)
                ),
                format!(
                    "throughput_ratio_{}_vs_{}",
                    count_key(large),
                    count_key(small)
                ),
                ">=",
                0.8,
            ),
            t(
                "policies on every agent cost ≤ 10 % of throughput",
                "policy_cost_ratio".into(),
                ">=",
                0.9,
            ),
            t(
                "secured mesh throughput ≥ 0.95 × open mesh (identity)",
                "secured_throughput_ratio".into(),
                ">=",
                0.95,
            ),
            t(
                "3-node cluster, R3: gateway throughput ≥ 0.8 × direct baseline",
                "cluster_throughput_ratio".into(),
                ">=",
                0.8,
            ),
            t(
                "3-node cluster, R3: kill fence p99 ≤ 20 ms, 3 replicas, under load",
                "cluster_kill_fence_p99_ms".into(),
                "<=",
                20.0,
            ),
        ];
        for target in &mut targets {
            target.value = self.get(&target.key);
            target.met = target.value.map(|v| match target.op {
                ">=" => v >= target.threshold,
                _ => v <= target.threshold,
            });
        }
        self.targets = targets;
    }

    /// The JSON document: metadata, every figure at the top level, targets, notes, errors.
    pub fn to_json(&self) -> Value {
        let mut doc = serde_json::Map::new();
        for (k, v) in &self.meta {
            doc.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.figures {
            doc.insert(k.clone(), v.clone());
        }
        doc.insert("targets".into(), json!(self.targets));
        doc.insert("notes".into(), json!(self.notes));
        doc.insert("errors".into(), json!(self.errors));
        Value::Object(doc)
    }

    /// The table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let meta = |k: &str| self.meta.get(k).cloned().unwrap_or(Value::Null);
        out.push_str(&format!(
            "mesh-bench{}: nats-server {}, {}\n\n",
            if self.params.quick { " --quick" } else { "" },
            meta("nats_server_version").as_str().unwrap_or("?"),
            meta("machine")
                .get("summary")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ));
        out.push_str(&format!("{:<44} {:>14}\n", "figure", "value"));
        for (k, v) in &self.figures {
            let shown = match v.as_f64() {
                Some(x) => fmt_num(x),
                None => "—".to_string(),
            };
            out.push_str(&format!("{k:<44} {shown:>14}\n"));
        }
        out.push_str(&format!(
            "\n{:<52} {:>12}  {}\n",
            "target (issue 4, identity)", "value", "verdict"
        ));
        for t in &self.targets {
            let v = t.value.map(fmt_num).unwrap_or_else(|| "—".into());
            out.push_str(&format!(
                "{:<52} {v:>12}  {}\n",
                format!("{} [{}]", t.target, t.key),
                t.verdict()
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }
}

/// `10`, `100`, `1k`, `10k`: agent counts in keys.
pub fn count_key(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// `10,000`: agent counts in words.
pub fn count_label(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A figure for the table: thousands separated above 1,000, three significant decimals below.
pub fn fmt_num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        count_label(x.round() as usize)
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_keys_and_words() {
        assert_eq!(count_key(10), "10");
        assert_eq!(count_key(1000), "1k");
        assert_eq!(count_key(10_000), "10k");
        assert_eq!(count_label(10_000), "10,000");
        assert_eq!(count_label(999), "999");
        assert_eq!(fmt_num(31234.4), "31,234");
        assert_eq!(fmt_num(0.456), "0.46");
    }
}
