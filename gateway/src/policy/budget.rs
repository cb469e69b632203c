//! Caps and ceilings, counted mesh-wide before delivery, in KV bucket `mesh-counters`.
//!
//! Intent counts are claimed from KV in small blocks with compare-and-set, so replicas never
//! claim more than the cap between them (an agent limited to N gets no more than N, whichever
//! replicas deliver its intents) while most intents cost no KV round trip. Blocks shrink as the
//! cap nears (an eighth of what is left, at most 64), so what a replica holds unused at the end
//! of a window is small. Costs are added per intent with compare-and-set, in micro-USD.
//! Windows are UTC clock hours and days; counters are keyed by window, so a restart resumes
//! from what KV holds.

use std::collections::HashMap;

use async_nats::jetstream::kv;
use mesh_schemas::AgentId;
use tokio::sync::Mutex;

use super::Effective;

/// A cap or ceiling that an intent would cross.
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    /// The policy field, e.g. `max_intents_per_hour`.
    pub rule: &'static str,
    /// A sentence for rejections and the audit trail.
    pub detail: String,
}

/// Counters could not be read or written: the delivery waits and retries (fail closed).
#[derive(Debug, thiserror::Error)]
#[error("policy counters unavailable ({key}): {why}")]
pub struct BudgetError {
    pub key: String,
    pub why: String,
}

/// The counters of one replica's view, with its locally claimed blocks.
pub struct Budget {
    kv: kv::Store,
    /// Intents claimed from KV and not used yet, by counter key.
    reserved: Mutex<HashMap<String, u64>>,
    /// Observations already recorded (agent, rule, window).
    observed: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Budget")
    }
}

const MICRO: f64 = 1_000_000.0;

/// The counter keys of an agent for the current windows.
pub struct Windows {
    pub hour: String,
    pub day: String,
    pub cost_day: String,
    pub cost_total: String,
    pub hour_ends_unix: u64,
    pub day_ends_unix: u64,
}

impl Windows {
    pub fn now(id: &AgentId) -> Windows {
        let secs = mesh_schemas::now_unix_ms() / 1000;
        let (hour, day) = (secs / 3600, secs / 86_400);
        Windows {
            hour: format!("{id}.h.{hour}"),
            day: format!("{id}.d.{day}"),
            cost_day: format!("{id}.usd.d.{day}"),
            cost_total: format!("{id}.usd.total"),
            hour_ends_unix: (hour + 1) * 3600,
            day_ends_unix: (day + 1) * 86_400,
        }
    }
}

fn utc(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_else(|_| unix.to_string())
}

impl Budget {
    pub fn new(kv: kv::Store) -> Self {
        Budget {
            kv,
            reserved: Mutex::new(HashMap::new()),
            observed: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Counts one intent of `from` costing `cost` USD against its caps and ceilings;
    /// `reported` is the cost its instances reported in heartbeats. `Ok(Err(breach))` when a
    /// limit would be crossed (nothing more is counted then).
    pub async fn claim(
        &self,
        from: &AgentId,
        eff: &Effective,
        cost: f64,
        reported: f64,
    ) -> Result<Result<(), Breach>, BudgetError> {
        let p = &eff.policy;
        let w = Windows::now(from);
        for (rule, key, cap, ends) in [
            (
                "max_intents_per_hour",
                &w.hour,
                p.max_intents_per_hour,
                w.hour_ends_unix,
            ),
            (
                "max_intents_per_day",
                &w.day,
                p.max_intents_per_day,
                w.day_ends_unix,
            ),
        ] {
            let Some(cap) = cap else { continue };
            if !self.take(key, cap).await? {
                return Ok(Err(Breach {
                    rule,
                    detail: format!(
                        "{from} reached {rule} = {cap}; the window resets at {}",
                        utc(ends)
                    ),
                }));
            }
        }
        let ceilings = [
            ("max_cost_usd_per_day", &w.cost_day, p.max_cost_usd_per_day),
            ("max_cost_usd", &w.cost_total, p.max_cost_usd),
        ];
        // Check every ceiling before adding to any.
        for (rule, key, ceiling) in ceilings {
            let Some(ceiling) = ceiling else { continue };
            let (counted, _) = self.read(key).await?;
            let total = counted as f64 / MICRO + reported + cost;
            if total > ceiling + 1e-9 {
                return Ok(Err(Breach {
                    rule,
                    detail: format!(
                        "{from} would reach ${total:.2} against {rule} = ${ceiling:.2} (counted ${:.2}, reported by heartbeats ${reported:.2}, this intent ${cost:.2})",
                        counted as f64 / MICRO
                    ),
                }));
            }
        }
        // With any cost ceiling set, count both (status shows cost today and in total).
        if cost > 0.0 && ceilings.iter().any(|(_, _, c)| c.is_some()) {
            let micros = (cost * MICRO).round() as u64;
            for (_, key, _) in ceilings {
                self.add(key, micros).await?;
            }
        }
        Ok(Ok(()))
    }

    /// Whether `key` (agent, rule, window) is observed for the first time by this replica:
    /// an `observe` breach is recorded once per window, not for every intent.
    pub async fn first_observation(&self, key: String) -> bool {
        let mut seen = self.observed.lock().await;
        if seen.len() > 65_536 {
            seen.clear();
        }
        seen.insert(key)
    }

    /// Drops this replica's unused blocks of `id` (on resume, when its counters are reset).
    pub async fn forget(&self, id: &AgentId) {
        let prefix = format!("{id}.");
        self.reserved
            .lock()
            .await
            .retain(|k, _| !k.starts_with(&prefix));
    }

    /// Current cost counted for `from` today and in total, in USD.
    pub async fn cost(&self, from: &AgentId) -> Result<(f64, f64), BudgetError> {
        let w = Windows::now(from);
        let (day, _) = self.read(&w.cost_day).await?;
        let (total, _) = self.read(&w.cost_total).await?;
        Ok((day as f64 / MICRO, total as f64 / MICRO))
    }

    /// Takes one intent from `key` under `cap`; false when the cap is reached.
    async fn take(&self, key: &str, cap: u64) -> Result<bool, BudgetError> {
        let mut reserved = self.reserved.lock().await;
        if let Some(n) = reserved.get_mut(key).filter(|n| **n > 0) {
            *n -= 1;
            return Ok(true);
        }
        for _ in 0..16 {
            let (value, revision) = self.read(key).await?;
            if value >= cap {
                return Ok(false);
            }
            let block = ((cap - value) / 8).clamp(1, 64);
            let next = (value + block).to_string();
            let res = match revision {
                None => self
                    .kv
                    .create(key, next.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Some(rev) => self
                    .kv
                    .update(key, next.into(), rev)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            if res.is_ok() {
                // Blocks of this counter's past windows are useless now.
                if let Some((prefix, _)) = key.rsplit_once('.') {
                    reserved.retain(|k, _| k == key || !k.starts_with(prefix));
                }
                reserved.insert(key.to_string(), block - 1);
                return Ok(true);
            }
            // Another replica claimed first: read again.
        }
        Err(BudgetError {
            key: key.to_string(),
            why: "too much contention claiming a block".to_string(),
        })
    }

    /// Adds `n` to `key` with compare-and-set.
    async fn add(&self, key: &str, n: u64) -> Result<(), BudgetError> {
        for _ in 0..16 {
            let (value, revision) = self.read(key).await?;
            let next = (value + n).to_string();
            let res = match revision {
                None => self.kv.create(key, next.into()).await.is_ok(),
                Some(rev) => self.kv.update(key, next.into(), rev).await.is_ok(),
            };
            if res {
                return Ok(());
            }
        }
        Err(BudgetError {
            key: key.to_string(),
            why: "too much contention adding cost".to_string(),
        })
    }

    /// A counter's value and revision (`None` when it does not exist yet). A value that is not
    /// a number is an error: a garbage counter must not silently read as zero.
    async fn read(&self, key: &str) -> Result<(u64, Option<u64>), BudgetError> {
        let err = |why: String| BudgetError {
            key: key.to_string(),
            why,
        };
        match self.kv.entry(key).await.map_err(|e| err(e.to_string()))? {
            Some(e) if e.operation == kv::Operation::Put => {
                let text = std::str::from_utf8(&e.value).map_err(|e| err(e.to_string()))?;
                let v = text
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| err(format!("counter value {text:?} is not a number")))?;
                Ok((v, Some(e.revision)))
            }
            Some(e) => Ok((0, Some(e.revision))),
            None => Ok((0, None)),
        }
    }
}
