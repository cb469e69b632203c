//! Throttling: a sender over its rate waits; nothing is dropped and no JetStream delivery
//! attempt is spent (its queue in the lane or drain simply does not advance).
//!
//! The token bucket is kept **mesh-wide** in KV bucket `mesh-counters`, key `<id>.rate`, as a
//! generic cell rate algorithm (GCRA): the value is the sender's *theoretical arrival time*
//! (TAT, nanoseconds since the Unix epoch, ASCII). With `T = per / count` and
//! `tau = (burst - 1) · T`, a permit may be taken at time `now` when `max(TAT, now) <= now + tau`,
//! and taking it moves the TAT to `max(TAT, now) + T`. Whichever replica delivers — the active
//! one on the shared lane, another one draining a parked recipient, the next one after a
//! failover — takes its permits from the same TAT with compare-and-set, so the replicas together
//! deliver the configured rate, not a share of it.
//!
//! A claim may take a small block of permits at once (at most 50 ms worth of the rate, at most
//! the burst, at most 64), all of which conform at the time of the claim. Each permit of a block
//! stands for one slot of the TAT and is valid until a short *grace* after that slot's time
//! (`g`: what the block's slots span short of 50 ms, at most an eighth of `tau`, whole
//! periods): a permit that was not used by then is dropped, never saved up. A claim pays for the grace up front: it conforms only
//! while the TAT is at most `tau - g` ahead of now. So every permit is used within
//! `[slot - (tau - g), slot + g]`, and any window of `t` seconds holds at most `rate · t + burst`
//! deliveries of the sender however many replicas deliver them (plus the clock skew between
//! replicas, times the rate).
//!
//! Without the grace a permit expired at its slot, and above 1,280/s the 64 slots of a block
//! span less than 50 ms (64 µs at 1,000,000/s): a sender slower than its rate found its held
//! permits expired and paid a compare-and-set per intent. The price of the grace is that after
//! an idle spell `burst - g / T` permits conform at once, not `burst`; up to 1,280/s the grace
//! is 0 or one period.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use mesh_schemas::{AgentId, Rate};
use tokio::sync::Mutex;

/// The rate bucket could not be read or written: the delivery waits and retries (fail closed).
#[derive(Debug, thiserror::Error)]
#[error("rate bucket unavailable ({key}): {why}")]
pub struct RateError {
    pub key: String,
    pub why: String,
}

/// Compare-and-set attempts before a claim gives up (the delivery retries later).
const CAS_ATTEMPTS: usize = 16;

/// Permits in one block, at most.
const MAX_BLOCK: u64 = 64;

/// How long a claimed block should stay usable: its slots' span plus the grace.
const BLOCK_LIFE_NS: u64 = 50_000_000;

/// The rate and burst of a sender, in the units the algorithm uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Nanoseconds per permit (`T`).
    pub period_ns: u64,
    /// How many permits may be taken at once.
    pub burst: u64,
}

impl Cell {
    /// From a policy's `rate` and `burst` (default: the per-second rate, at least 1).
    pub fn new(rate: Rate, burst: Option<u32>) -> Cell {
        let count = u64::from(rate.count.max(1));
        let per_ns = u64::try_from(rate.per.as_nanos()).unwrap_or(u64::MAX);
        let per_second = (rate.count as f64 / rate.per.as_secs_f64()).ceil() as u64;
        Cell {
            period_ns: (per_ns / count).max(1),
            burst: burst.map(u64::from).unwrap_or(per_second).max(1),
        }
    }

    /// `tau`: how far the TAT may run ahead of now.
    fn tolerance_ns(self) -> u64 {
        (self.burst - 1).saturating_mul(self.period_ns)
    }

    /// `g`: how long after its slot a held permit may still be used, so that a block stays
    /// usable for about 50 ms however short its slots span. Whole periods, at most an eighth
    /// of `tau`; claims conform within `tau - g` to pay for it.
    fn grace_ns(self) -> u64 {
        let span = (self.max_block() - 1).saturating_mul(self.period_ns);
        let g = (self.tolerance_ns() / 8).min(BLOCK_LIFE_NS.saturating_sub(span));
        g / self.period_ns * self.period_ns
    }

    /// The largest block a claim takes: 50 ms worth of the rate, within 1..=burst and 64.
    fn max_block(self) -> u64 {
        (50_000_000 / self.period_ns).clamp(1, self.burst.min(MAX_BLOCK))
    }
}

/// What a claim at `now` may take from a bucket whose TAT is `tat`.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Take `n` permits; the first slot is `first` and the new TAT is `first + n·T`.
    Take { first: u64, n: u64 },
    /// Nothing conforms before `now + wait`.
    Wait(Duration),
}

/// The GCRA decision, a pure function of the TAT, the time and the cell.
pub fn plan(tat: u64, now: u64, cell: Cell) -> Plan {
    let first = tat.max(now);
    let limit = now.saturating_add(cell.tolerance_ns() - cell.grace_ns());
    if first > limit {
        return Plan::Wait(Duration::from_nanos(first - limit));
    }
    let fit = (limit - first) / cell.period_ns + 1;
    Plan::Take {
        first,
        n: fit.min(cell.max_block()),
    }
}

/// One sender's state in this replica.
#[derive(Debug, Default)]
struct Sender {
    /// The TAT this replica last read or wrote, with its revision (`None`: no key yet); `None`
    /// before the first read.
    known: Option<(u64, Option<u64>)>,
    /// Slots of permits claimed and not used yet, oldest first; each valid until its time.
    held: VecDeque<u64>,
}

/// Per-sender rate buckets, mesh-wide in KV.
pub struct RateLimits {
    kv: kv::Store,
    /// This replica's view per sender; each sender's claims lock only that sender.
    senders: SyncMutex<HashMap<AgentId, Arc<Mutex<Sender>>>>,
    /// KV round trips made so far (diagnostics and tests).
    round_trips: AtomicU64,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimits")
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl RateLimits {
    pub fn new(kv: kv::Store) -> Self {
        RateLimits {
            kv,
            senders: SyncMutex::new(HashMap::new()),
            round_trips: AtomicU64::new(0),
        }
    }

    /// KV round trips made so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The key of `from`'s bucket in `mesh-counters`.
    pub fn key(from: &AgentId) -> String {
        format!("{from}.rate")
    }

    /// Waits until `from` may deliver one intent under `rate`/`burst`, mesh-wide. Dropping the
    /// future while it waits loses nothing but, at worst, permits claimed and not used.
    pub async fn acquire(
        &self,
        from: &AgentId,
        rate: Rate,
        burst: Option<u32>,
    ) -> Result<(), RateError> {
        let cell = Cell::new(rate, burst);
        let state = self.sender(from);
        loop {
            let wait = {
                let mut s = state.lock().await;
                match self.claim(from, &mut s, cell).await? {
                    None => return Ok(()),
                    Some(wait) => wait,
                }
            };
            // The throttle itself: nothing conforms before then.
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a held permit or claims a block; `Some(wait)` when none conforms yet.
    async fn claim(
        &self,
        from: &AgentId,
        s: &mut Sender,
        cell: Cell,
    ) -> Result<Option<Duration>, RateError> {
        let now = now_ns();
        let grace = cell.grace_ns();
        while let Some(slot) = s.held.pop_front() {
            if slot.saturating_add(grace) >= now {
                return Ok(None);
            }
        }
        let key = Self::key(from);
        for _ in 0..CAS_ATTEMPTS {
            let (tat, revision) = match s.known {
                Some(k) => k,
                None => {
                    let k = self.read(&key).await?;
                    s.known = Some(k);
                    k
                }
            };
            let now = now_ns();
            let (first, n) = match plan(tat, now, cell) {
                Plan::Wait(wait) => return Ok(Some(wait)),
                Plan::Take { first, n } => (first, n),
            };
            let next = first.saturating_add(n.saturating_mul(cell.period_ns));
            match self.set(&key, next, revision).await? {
                Some(rev) => {
                    s.known = Some((next, Some(rev)));
                    s.held = (1..n).map(|i| first + i * cell.period_ns).collect();
                    return Ok(None);
                }
                // Another replica claimed first: read again.
                None => s.known = None,
            }
        }
        Err(RateError {
            key,
            why: "too much contention claiming permits".to_string(),
        })
    }

    fn sender(&self, id: &AgentId) -> Arc<Mutex<Sender>> {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = senders.get(id) {
            return s.clone();
        }
        senders.entry(id.clone()).or_default().clone()
    }

    /// Writes `tat` if the key is still at `revision`; `Ok(None)` when another writer came
    /// first.
    async fn set(
        &self,
        key: &str,
        tat: u64,
        revision: Option<u64>,
    ) -> Result<Option<u64>, RateError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let value = tat.to_string().into();
        let err = |why: String| RateError {
            key: key.to_string(),
            why,
        };
        match revision {
            None => match self.kv.create(key, value).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(err(e.to_string())),
            },
            Some(rev) => match self.kv.update(key, value, rev).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(err(e.to_string())),
            },
        }
    }

    /// The TAT and revision of `key` (0 and `None` when it does not exist; 0 after a purge).
    /// A value that is not a number is an error: it must not silently read as a full bucket.
    async fn read(&self, key: &str) -> Result<(u64, Option<u64>), RateError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let err = |why: String| RateError {
            key: key.to_string(),
            why,
        };
        match self.kv.entry(key).await.map_err(|e| err(e.to_string()))? {
            Some(e) if e.operation == kv::Operation::Put => {
                let text = std::str::from_utf8(&e.value).map_err(|e| err(e.to_string()))?;
                let v = text
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| err(format!("rate value {text:?} is not a number")))?;
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
    use mesh_testkit::NatsServer;

    use super::*;

    const MS: u64 = 1_000_000;

    fn cell(rate: &str, burst: u32) -> Cell {
        Cell::new(Rate::parse(rate).unwrap(), Some(burst))
    }

    #[test]
    fn a_full_bucket_gives_its_burst_in_blocks_then_one_slot_per_period() {
        let c = cell("20/s", 5);
        assert_eq!(c.period_ns, 50 * MS);
        // 50 ms worth of 20/s is one permit per block.
        assert_eq!(
            plan(0, 1000 * MS, c),
            Plan::Take {
                first: 1000 * MS,
                n: 1
            }
        );
        // After five permits at once the TAT is 250 ms ahead: the sixth waits 50 ms.
        assert_eq!(
            plan(1250 * MS, 1000 * MS, c),
            Plan::Wait(Duration::from_millis(50))
        );
        assert_eq!(
            plan(1250 * MS, 1050 * MS, c),
            Plan::Take {
                first: 1250 * MS,
                n: 1
            }
        );
    }

    #[test]
    fn blocks_never_exceed_the_burst_or_fifty_milliseconds() {
        let fast = cell("1000/s", 200);
        assert_eq!(plan(0, 10, fast), Plan::Take { first: 10, n: 50 });
        let small_burst = cell("1000/s", 3);
        assert_eq!(plan(0, 10, small_burst), Plan::Take { first: 10, n: 3 });
    }

    /// Any one-second window holds at most `rate + burst` permits when each is used between
    /// `slot - tau` and its slot, which is how held permits are spent.
    #[test]
    fn slots_taken_as_fast_as_possible_stay_within_rate_plus_burst_per_second() {
        let c = cell("20/s", 5);
        let (mut tat, mut now, mut used) = (0u64, 5_000 * MS, Vec::new());
        while used.len() < 200 {
            match plan(tat, now, c) {
                Plan::Take { first, n } => {
                    for i in 0..n {
                        used.push(now.max(first + i * c.period_ns - c.tolerance_ns()));
                    }
                    tat = first + n * c.period_ns;
                }
                Plan::Wait(w) => now += w.as_nanos() as u64,
            }
        }
        for (i, start) in used.iter().enumerate() {
            let in_window = used[i..]
                .iter()
                .take_while(|t| **t < start + 1000 * MS)
                .count();
            assert!(in_window <= 25, "{in_window} permits in one second");
        }
        let span = (used[199] - used[0]) as f64 / 1e9;
        // 200 permits at 20/s after a burst of 5: (200 - 5) / 20 s.
        assert!((span - 9.75).abs() < 0.01, "span {span}");
    }

    #[test]
    fn the_grace_is_whole_periods_within_an_eighth_of_tau_and_fifty_milliseconds() {
        // 20/s, burst 5: tau 200 ms, an eighth is less than one 50 ms period.
        assert_eq!(cell("20/s", 5).grace_ns(), 0);
        // 1,000/s, burst 1,000: a block of 50 spans 49 ms; one period fills the 50 ms.
        assert_eq!(cell("1000/s", 1000).grace_ns(), MS);
        // 1,000,000/s, burst 1,000,000: a block of 64 spans 63 µs.
        assert_eq!(cell("1000000/s", 1_000_000).grace_ns(), 50 * MS - 63_000);
        // 10,000/s, burst 1,000: tau 99.9 ms, an eighth is 12.49 ms, whole periods 12.4 ms.
        assert_eq!(cell("10000/s", 1000).grace_ns(), 12_400_000);
        // A burst of 1 has no tolerance, so no grace.
        assert_eq!(cell("100000/s", 1).grace_ns(), 0);
    }

    /// Two replicas claim in turn from one TAT, as fast as the bucket allows. The first uses
    /// every permit as late as its grace lets it, the second as early as it conforms: the
    /// worst mix for the bound. No window of one second holds more than `rate + burst`.
    #[test]
    fn permits_used_late_within_their_grace_keep_rate_plus_burst_per_second() {
        let c = cell("10000/s", 1000);
        let (g, tau) = (c.grace_ns(), c.tolerance_ns());
        assert!(g > 0);
        let (mut tat, mut now, mut used, mut turn) = (0u64, 5_000 * MS, Vec::new(), 0);
        while used.len() < 40_000 {
            match plan(tat, now, c) {
                Plan::Take { first, n } => {
                    for i in 0..n {
                        let slot = first + i * c.period_ns;
                        // Every permit of a claim conforms at the claim, and is valid until
                        // its slot plus the grace.
                        assert!(slot <= now + tau - g, "slot beyond tau - g");
                        used.push(if turn % 2 == 0 {
                            slot + g
                        } else {
                            now.max(slot.saturating_sub(tau - g))
                        });
                    }
                    tat = first + n * c.period_ns;
                    turn += 1;
                }
                Plan::Wait(w) => now += w.as_nanos() as u64,
            }
        }
        used.sort_unstable();
        let (mut busiest, mut end) = (0, 0);
        for (i, start) in used.iter().enumerate() {
            while end < used.len() && used[end] < start + 1000 * MS {
                end += 1;
            }
            busiest = busiest.max(end - i);
        }
        assert!(busiest <= 11_000, "{busiest} permits in one second");
        assert!(
            busiest >= 10_000,
            "only {busiest} permits in the busiest second"
        );
    }

    /// A sender slower than its rate (the usual case) spends most permits of a block: before
    /// the grace each permit expired at its slot, and every intent cost a compare-and-set.
    #[tokio::test]
    async fn a_sender_below_its_rate_claims_permits_in_blocks() {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let kv = js
            .create_key_value(kv::Config {
                bucket: "counters".to_string(),
                history: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let limits = RateLimits::new(kv);
        let a = AgentId::new("A").unwrap();
        let rate = Rate::parse("100000/s").unwrap();
        // 100 intents at about 500/s against a rate of 100,000/s: blocks of 64 permits whose
        // slots span 630 µs, valid about 50 ms, so a block serves about 25 intents.
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        for _ in 0..100 {
            pace.tick().await;
            limits.acquire(&a, rate, Some(100_000)).await.unwrap();
        }
        let trips = limits.round_trips();
        eprintln!("{trips} KV round trips for 100 intents at 500/s");
        assert!(trips <= 20, "{trips} KV round trips for 100 intents");
    }
}
