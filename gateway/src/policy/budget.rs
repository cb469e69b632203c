//! Caps and ceilings, counted mesh-wide before delivery, in KV bucket `mesh-counters`.
//!
//! Each counter in KV holds what the replicas have *claimed* between them, not what was used:
//! a replica claims a block with compare-and-set and then spends it locally, so most intents
//! cost no KV round trip.
//!
//! - Intent caps (`<id>.h.<hour>`, `<id>.d.<day>`): a block is an eighth of what is left, at
//!   least 1 and at most 64 intents.
//! - Cost ceilings (`<id>.usd.d.<day>`, `<id>.usd.total`, in micro-USD): a block is at least
//!   what the intent needs beyond what this replica still holds, and otherwise an eighth of the
//!   room left under the ceiling (after the cost reported in heartbeats), at most 64 times the
//!   intent's cost. With one ceiling set, the other counter is claimed too (status shows both),
//!   in blocks of at most an eighth of the ceiling.
//!
//! A replica never claims past a cap or ceiling, so the replicas together never deliver more
//! than the limit, whichever of them delivers. They can deliver *less*: what a replica holds
//! unused when the limit is reached elsewhere (at most one block per replica and counter) is
//! lost until the window rolls. Blocks shrink as the limit nears, so that loss is small. For
//! the same reason the counters (and `mesh-cli status`) can run ahead of what was delivered by
//! up to a block per replica.
//!
//! An intent costs KV I/O only when it needs a new block, or when it is checked against a cost
//! ceiling for the first time since the agent's reported cost changed (the counter is read
//! again, because other replicas may have claimed meanwhile). An intent with no `Mesh-Cost`
//! and an unchanged reported cost costs none. Counters only grow within a window (until
//! `mesh-cli resume` resets them and the gateways [`Budget::forget`] their blocks), so a limit
//! this replica has seen reached stays reached without reading KV again.
//!
//! Claims lock one agent's state, so the I/O of one agent's claim never holds up another's.
//! Windows are UTC clock hours and days; counters are keyed by window, so a restart resumes
//! from what KV holds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};

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
    /// Blocks claimed by this replica, per agent; each agent's claims lock only that agent.
    agents: SyncMutex<HashMap<AgentId, Arc<Mutex<Claims>>>>,
    /// Observations already recorded (agent, rule, window).
    observed: SyncMutex<HashSet<String>>,
    /// KV round trips made so far (reads and writes of counters).
    round_trips: AtomicU64,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Budget")
    }
}

const MICRO: f64 = 1_000_000.0;

/// Intents (or intents' worth of cost) in one block, at most.
const MAX_BLOCK_INTENTS: u64 = 64;

/// Compare-and-set attempts before a claim gives up (the delivery retries later).
const CAS_ATTEMPTS: usize = 16;

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
        let (hour, day) = windows_now();
        Windows {
            hour: Counter::Hour.key(id, hour),
            day: Counter::Day.key(id, day),
            cost_day: Counter::CostDay.key(id, day),
            cost_total: Counter::CostTotal.key(id, 0),
            hour_ends_unix: (hour + 1) * 3600,
            day_ends_unix: (day + 1) * 86_400,
        }
    }
}

/// The current UTC hour and day, as numbers since the epoch.
fn windows_now() -> (u64, u64) {
    let secs = mesh_schemas::now_unix_ms() / 1000;
    (secs / 3600, secs / 86_400)
}

/// One of an agent's counters.
#[derive(Clone, Copy, Debug)]
enum Counter {
    Hour,
    Day,
    CostDay,
    CostTotal,
}

impl Counter {
    /// Its key in KV for `window` (ignored for the total).
    fn key(self, id: &AgentId, window: u64) -> String {
        match self {
            Counter::Hour => format!("{id}.h.{window}"),
            Counter::Day => format!("{id}.d.{window}"),
            Counter::CostDay => format!("{id}.usd.d.{window}"),
            Counter::CostTotal => format!("{id}.usd.total"),
        }
    }
}

/// One agent's blocks held by this replica.
#[derive(Debug, Default)]
struct Claims {
    hour: Block,
    day: Block,
    cost_day: Block,
    cost_total: Block,
}

impl Claims {
    /// Drops the blocks of windows that have ended.
    fn roll(&mut self, hour: u64, day: u64) {
        self.hour.roll(hour);
        self.day.roll(day);
        self.cost_day.roll(day);
        self.cost_total.roll(0);
    }

    fn block(&mut self, counter: Counter) -> &mut Block {
        match counter {
            Counter::Hour => &mut self.hour,
            Counter::Day => &mut self.day,
            Counter::CostDay => &mut self.cost_day,
            Counter::CostTotal => &mut self.cost_total,
        }
    }
}

/// What this replica knows of one counter in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Block {
    /// The window (hour or day number; 0 for the total).
    window: u64,
    /// Claimed by this replica and not used yet (intents, or micro-USD).
    left: u64,
    /// The counter's value when this replica last read or wrote it. Counters only grow within
    /// a window, so KV holds at least this much.
    seen: u64,
    /// The reported cost (micro-USD) that `seen` was last read with; `None` before any read.
    reported: Option<u64>,
}

impl Block {
    fn roll(&mut self, window: u64) {
        if self.window != window {
            *self = Block {
                window,
                ..Block::default()
            };
        }
    }
}

/// Whether a cost fits under a ceiling, all in micro-USD: what the counter holds (claimed by
/// every replica) less this replica's unused block, plus the reported cost and this intent's.
fn fits(seen: u64, left: u64, reported: u64, cost: u64, ceiling: u64) -> bool {
    seen.saturating_sub(left)
        .saturating_add(reported)
        .saturating_add(cost)
        <= ceiling
}

/// USD to micro-USD (negative and NaN to 0).
fn micros(usd: f64) -> u64 {
    (usd * MICRO).round() as u64
}

fn usd(micros: u64) -> f64 {
    micros as f64 / MICRO
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

/// A cost ceiling checked for one intent.
struct Ceiling {
    rule: &'static str,
    counter: Counter,
    /// In micro-USD; `None` when only the other ceiling is set (the counter is still kept).
    limit: Option<u64>,
}

impl Budget {
    pub fn new(kv: kv::Store) -> Self {
        Budget {
            kv,
            agents: SyncMutex::new(HashMap::new()),
            observed: SyncMutex::new(HashSet::new()),
            round_trips: AtomicU64::new(0),
        }
    }

    /// KV round trips made by this budget so far (diagnostics and tests).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Counts one intent of `from` costing `cost` USD against its caps and ceilings;
    /// `reported` is the cost its instances reported in heartbeats. `Ok(Err(breach))` when a
    /// limit would be crossed (no cost is counted then).
    pub async fn claim(
        &self,
        from: &AgentId,
        eff: &Effective,
        cost: f64,
        reported: f64,
    ) -> Result<Result<(), Breach>, BudgetError> {
        let p = &eff.policy;
        let caps = [
            (
                "max_intents_per_hour",
                Counter::Hour,
                p.max_intents_per_hour,
            ),
            ("max_intents_per_day", Counter::Day, p.max_intents_per_day),
        ];
        let any_ceiling = p.max_cost_usd_per_day.is_some() || p.max_cost_usd.is_some();
        if !any_ceiling && caps.iter().all(|(_, _, cap)| cap.is_none()) {
            return Ok(Ok(()));
        }
        let (hour, day) = windows_now();
        let cell = self.claims(from);
        let mut claims = cell.lock().await;
        claims.roll(hour, day);

        for (rule, counter, cap) in caps {
            let Some(cap) = cap else { continue };
            if !self.take(from, counter, claims.block(counter), cap).await? {
                let ends = match counter {
                    Counter::Hour => (hour + 1) * 3600,
                    _ => (day + 1) * 86_400,
                };
                return Ok(Err(Breach {
                    rule,
                    detail: format!(
                        "{from} reached {rule} = {cap}; the window resets at {}",
                        utc(ends)
                    ),
                }));
            }
        }
        if !any_ceiling {
            return Ok(Ok(()));
        }

        let (cost_m, reported_m) = (micros(cost), micros(reported));
        let limits = [p.max_cost_usd_per_day, p.max_cost_usd].map(|c| c.map(micros));
        // The counter of an unset ceiling takes blocks no larger than an eighth of the other.
        let smallest = limits.iter().flatten().min().copied().unwrap_or(0);
        let ceilings = [
            Ceiling {
                rule: "max_cost_usd_per_day",
                counter: Counter::CostDay,
                limit: limits[0],
            },
            Ceiling {
                rule: "max_cost_usd",
                counter: Counter::CostTotal,
                limit: limits[1],
            },
        ];
        // Check (and cover) every ceiling before spending from any block.
        for c in &ceilings {
            let Some(limit) = c.limit else { continue };
            let block = claims.block(c.counter);
            if let Err(counted) = self
                .reserve(from, c.counter, block, cost_m, reported_m, limit)
                .await?
            {
                let total = usd(counted) + reported + cost;
                return Ok(Err(Breach {
                    rule: c.rule,
                    detail: format!(
                        "{from} would reach ${total:.2} against {} = ${:.2} (counted ${:.2}, reported by heartbeats ${reported:.2}, this intent ${cost:.2})",
                        c.rule,
                        usd(limit),
                        usd(counted)
                    ),
                }));
            }
        }
        for c in ceilings.iter().filter(|c| c.limit.is_none()) {
            let block = claims.block(c.counter);
            self.reserve_uncapped(from, c.counter, block, cost_m, smallest / 8)
                .await?;
        }
        for c in &ceilings {
            let block = claims.block(c.counter);
            block.left -= cost_m;
        }
        Ok(Ok(()))
    }

    /// This replica's claims for `id` (created empty).
    fn claims(&self, id: &AgentId) -> Arc<Mutex<Claims>> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = agents.get(id) {
            return c.clone();
        }
        agents.entry(id.clone()).or_default().clone()
    }

    /// Whether `key` (agent, rule, window) is observed for the first time by this replica:
    /// an `observe` breach is recorded once per window, not for every intent.
    pub async fn first_observation(&self, key: String) -> bool {
        let mut seen = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 65_536 {
            seen.clear();
        }
        seen.insert(key)
    }

    /// Drops this replica's blocks and readings of `id` (on resume, when its counters are
    /// reset). A claim running meanwhile finishes on the dropped state.
    pub async fn forget(&self, id: &AgentId) {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Cost counted for `from` today and in total, in USD: what the replicas claimed, less
    /// what this replica holds unused.
    pub async fn cost(&self, from: &AgentId) -> Result<(f64, f64), BudgetError> {
        let (_, day_now) = windows_now();
        let w = Windows::now(from);
        let (day, _) = self.read(&w.cost_day).await?;
        let (total, _) = self.read(&w.cost_total).await?;
        let held = self
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(from)
            .cloned();
        let (held_day, held_total) = match held {
            Some(cell) => match cell.try_lock() {
                Ok(c) => (
                    if c.cost_day.window == day_now {
                        c.cost_day.left
                    } else {
                        0
                    },
                    c.cost_total.left,
                ),
                // A claim is running: count what it holds as used (the higher figure).
                Err(_) => (0, 0),
            },
            None => (0, 0),
        };
        Ok((
            usd(day.saturating_sub(held_day)),
            usd(total.saturating_sub(held_total)),
        ))
    }

    /// Takes one intent from `counter` under `cap`; false when the cap is reached.
    async fn take(
        &self,
        from: &AgentId,
        counter: Counter,
        block: &mut Block,
        cap: u64,
    ) -> Result<bool, BudgetError> {
        if block.left > 0 {
            block.left -= 1;
            return Ok(true);
        }
        if block.seen >= cap {
            // Reached, and counters only grow within a window.
            return Ok(false);
        }
        let key = counter.key(from, block.window);
        for _ in 0..CAS_ATTEMPTS {
            let (value, revision) = self.read(&key).await?;
            block.seen = value;
            if value >= cap {
                return Ok(false);
            }
            let n = ((cap - value) / 8).clamp(1, MAX_BLOCK_INTENTS);
            if self.set(&key, value + n, revision).await {
                block.seen = value + n;
                block.left = n - 1;
                return Ok(true);
            }
            // Another replica claimed first: read again.
        }
        Err(BudgetError {
            key,
            why: "too much contention claiming a block".to_string(),
        })
    }

    /// Makes sure this replica holds `cost` micro-USD of `counter` under `ceiling`, claiming a
    /// block when its own does not cover it. `Ok(Err(counted))` when the cost does not fit;
    /// `counted` is what the counter holds less this replica's unused block. Nothing is spent.
    async fn reserve(
        &self,
        from: &AgentId,
        counter: Counter,
        block: &mut Block,
        cost: u64,
        reported: u64,
        ceiling: u64,
    ) -> Result<Result<(), u64>, BudgetError> {
        if !fits(block.seen, block.left, reported, cost, ceiling) {
            // KV holds at least `seen`: no need to read it to know.
            return Ok(Err(block.seen.saturating_sub(block.left)));
        }
        if block.reported == Some(reported) && cost <= block.left {
            // Covered by a block claimed with this reported cost (or no cost at all).
            return Ok(Ok(()));
        }
        let key = counter.key(from, block.window);
        for _ in 0..CAS_ATTEMPTS {
            let (value, revision) = self.read(&key).await?;
            block.seen = value;
            block.reported = Some(reported);
            if !fits(value, block.left, reported, cost, ceiling) {
                return Ok(Err(value.saturating_sub(block.left)));
            }
            if cost <= block.left {
                return Ok(Ok(()));
            }
            let need = cost - block.left;
            // `fits` means value + reported + need <= ceiling.
            let room = ceiling.saturating_sub(reported).saturating_sub(value);
            // At least what is needed; more only within the room (`need <= room`).
            let n = need.max((room / 8).min(cost.saturating_mul(MAX_BLOCK_INTENTS)));
            if self.set(&key, value + n, revision).await {
                block.seen = value + n;
                block.left += n;
                return Ok(Ok(()));
            }
        }
        Err(BudgetError {
            key,
            why: "too much contention claiming a block of cost".to_string(),
        })
    }

    /// Like [`Budget::reserve`] for the counter of a ceiling that is not set: it is still
    /// counted, in blocks of at most `max_block` (or what the intent needs).
    async fn reserve_uncapped(
        &self,
        from: &AgentId,
        counter: Counter,
        block: &mut Block,
        cost: u64,
        max_block: u64,
    ) -> Result<(), BudgetError> {
        if cost <= block.left {
            return Ok(());
        }
        let need = cost - block.left;
        let n = need.max(max_block.min(cost.saturating_mul(MAX_BLOCK_INTENTS)));
        let key = counter.key(from, block.window);
        for _ in 0..CAS_ATTEMPTS {
            let (value, revision) = self.read(&key).await?;
            if self.set(&key, value.saturating_add(n), revision).await {
                block.seen = value.saturating_add(n);
                block.left += n;
                return Ok(());
            }
        }
        Err(BudgetError {
            key,
            why: "too much contention adding cost".to_string(),
        })
    }

    /// Writes `value` to `key` if it is still at `revision` (`None`: if it does not exist).
    /// False when another writer came first (or the write failed: the caller reads again).
    async fn set(&self, key: &str, value: u64, revision: Option<u64>) -> bool {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let value = value.to_string().into();
        match revision {
            None => self.kv.create(key, value).await.is_ok(),
            Some(rev) => self.kv.update(key, value, rev).await.is_ok(),
        }
    }

    /// A counter's value and revision (`None` when it does not exist yet). A value that is not
    /// a number is an error: a garbage counter must not silently read as zero.
    async fn read(&self, key: &str) -> Result<(u64, Option<u64>), BudgetError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mesh_schemas::Policy;
    use mesh_testkit::NatsServer;

    use super::*;

    async fn counters(server: &NatsServer) -> kv::Store {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_key_value(kv::Config {
            bucket: "counters".to_string(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap()
    }

    fn policy(p: Policy) -> Effective {
        Effective {
            policy: p,
            ..Default::default()
        }
    }

    fn ceilings(per_day: Option<f64>, total: Option<f64>) -> Effective {
        policy(Policy {
            max_cost_usd_per_day: per_day,
            max_cost_usd: total,
            ..Default::default()
        })
    }

    fn agent(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    #[tokio::test]
    async fn free_intents_cost_no_round_trip_until_the_reported_cost_changes() {
        let server = NatsServer::start();
        let budget = Budget::new(counters(&server).await);
        let (a, eff) = (agent("A"), ceilings(Some(5.0), Some(10.0)));

        budget.claim(&a, &eff, 0.0, 0.0).await.unwrap().unwrap();
        let first = budget.round_trips();
        assert_eq!(first, 2, "both ceilings read once");
        for _ in 0..100 {
            budget.claim(&a, &eff, 0.0, 0.0).await.unwrap().unwrap();
        }
        assert_eq!(budget.round_trips(), first, "no KV I/O for free intents");

        // A new reported cost: both counters are read again, once.
        budget.claim(&a, &eff, 0.0, 1.0).await.unwrap().unwrap();
        let second = budget.round_trips();
        assert_eq!(second, first + 2);
        for _ in 0..100 {
            budget.claim(&a, &eff, 0.0, 1.0).await.unwrap().unwrap();
        }
        assert_eq!(budget.round_trips(), second);

        // Costed intents are served from blocks: $0.01 × 100 in a few claims.
        for _ in 0..100 {
            budget.claim(&a, &eff, 0.01, 1.0).await.unwrap().unwrap();
        }
        let costed = budget.round_trips() - second;
        eprintln!("{costed} KV round trips for 100 intents of $0.01");
        assert!(costed <= 16, "{costed} round trips for 100 costed intents");
        let (day, total) = budget.cost(&a).await.unwrap();
        assert!((day - 1.0).abs() < 1e-6, "spent today: {day}");
        assert!((total - 1.0).abs() < 1e-6, "spent in total: {total}");
    }

    #[tokio::test]
    async fn a_reported_cost_over_the_ceiling_refuses_even_free_intents() {
        let server = NatsServer::start();
        let budget = Budget::new(counters(&server).await);
        let (a, eff) = (agent("A"), ceilings(None, Some(1.0)));
        budget.claim(&a, &eff, 0.5, 0.0).await.unwrap().unwrap();
        let breach = budget.claim(&a, &eff, 0.0, 0.6).await.unwrap().unwrap_err();
        assert_eq!(breach.rule, "max_cost_usd");
        // Still refused, without reading again.
        let before = budget.round_trips();
        budget.claim(&a, &eff, 0.0, 0.6).await.unwrap().unwrap_err();
        assert_eq!(budget.round_trips(), before);
        // Exactly at the ceiling is allowed.
        budget.claim(&a, &eff, 0.0, 0.5).await.unwrap().unwrap();
        budget
            .claim(&a, &eff, 0.01, 0.5)
            .await
            .unwrap()
            .unwrap_err();
        // A reported cost that goes down (an agent restarted) makes room again.
        budget.claim(&a, &eff, 0.5, 0.0).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_reached_cap_is_refused_without_reading_again() {
        let server = NatsServer::start();
        let budget = Budget::new(counters(&server).await);
        let a = agent("A");
        let eff = policy(Policy {
            max_intents_per_hour: Some(3),
            ..Default::default()
        });
        for _ in 0..3 {
            budget.claim(&a, &eff, 0.0, 0.0).await.unwrap().unwrap();
        }
        let breach = budget.claim(&a, &eff, 0.0, 0.0).await.unwrap().unwrap_err();
        assert_eq!(breach.rule, "max_intents_per_hour");
        let before = budget.round_trips();
        budget.claim(&a, &eff, 0.0, 0.0).await.unwrap().unwrap_err();
        assert_eq!(budget.round_trips(), before);
        // forget (on resume, after the counters were reset) starts from KV again.
        budget.forget(&a).await;
        budget.claim(&a, &eff, 0.0, 0.0).await.unwrap().unwrap_err();
        assert!(budget.round_trips() > before);
    }

    /// Two replicas (two budgets on one bucket) spend from one ceiling concurrently: together
    /// they never pass it, and stop short of it by at most what they hold unused.
    #[tokio::test]
    async fn replicas_together_never_spend_past_a_ceiling() {
        let server = NatsServer::start();
        let store = counters(&server).await;
        let replicas = [Budget::new(store.clone()), Budget::new(store)];
        let (a, eff) = (agent("A"), ceilings(Some(2.0), Some(3.0)));
        let reported = 0.25;
        async fn spend(budget: &Budget, a: &AgentId, eff: &Effective, cost: f64) -> f64 {
            let mut spent = 0.0;
            let mut refused = 0;
            while refused < 3 {
                match budget.claim(a, eff, cost, 0.25).await.unwrap() {
                    Ok(()) => spent += cost,
                    Err(_) => refused += 1,
                }
            }
            spent
        }
        let (x, y) = tokio::join!(
            spend(&replicas[0], &a, &eff, 0.03),
            spend(&replicas[1], &a, &eff, 0.05)
        );
        let total = x + y;
        eprintln!("spent {x:.2} + {y:.2} = {total:.2} of 2.00 - {reported} reported");
        assert!(total <= 1.75 + 1e-9, "ceiling crossed: {total}");
        assert!(total >= 1.60, "far below the ceiling: {total}");
        assert!(x > 0.0 && y > 0.0);
    }
}
