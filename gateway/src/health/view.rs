//! This replica's view of heartbeats, and the pure rules that turn it into health states.
//!
//! Nothing here reads a clock: every method that depends on time takes `now`, so the rules are
//! tested with injected instants and the gateway passes `Instant::now()`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_schemas::{AgentId, HealthState};

use crate::policy::Effective;

/// Heartbeat silence after which an agent is `degraded` when its policy does not say.
pub const DEFAULT_DEGRADED_AFTER: Duration = Duration::from_secs(30);
/// Heartbeat silence after which an agent is `unreachable` when its policy does not say.
pub const DEFAULT_UNREACHABLE_AFTER: Duration = Duration::from_secs(120);
/// When a policy sets only one threshold and it would cross the other's default, the other is
/// derived from it by this ratio (`unreachable_after = 4 × degraded_after`).
pub const THRESHOLD_RATIO: u32 = 4;
/// Agents tracked at most; heartbeats of further agents are ignored (and logged).
pub const MAX_AGENTS: usize = 65_536;
/// Instances tracked per agent; beyond it the longest-silent instance is forgotten, and its
/// reported cost is kept.
pub const MAX_INSTANCES: usize = 1_024;

/// The two thresholds of one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub degraded_after: Duration,
    pub unreachable_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            degraded_after: DEFAULT_DEGRADED_AFTER,
            unreachable_after: DEFAULT_UNREACHABLE_AFTER,
        }
    }
}

impl Thresholds {
    /// From a policy's optional values: unset ones take the defaults; when only one is set and
    /// the pair would be out of order, the unset one follows [`THRESHOLD_RATIO`].
    pub fn new(degraded_after: Option<Duration>, unreachable_after: Option<Duration>) -> Self {
        match (degraded_after, unreachable_after) {
            // Validation refuses `u <= d`; a record written behind its back still gets an order.
            (Some(d), Some(u)) => Thresholds {
                degraded_after: d,
                unreachable_after: if u > d { u } else { d * THRESHOLD_RATIO },
            },
            (Some(d), None) => Thresholds {
                degraded_after: d,
                unreachable_after: if d < DEFAULT_UNREACHABLE_AFTER {
                    DEFAULT_UNREACHABLE_AFTER
                } else {
                    d * THRESHOLD_RATIO
                },
            },
            (None, Some(u)) => Thresholds {
                degraded_after: if DEFAULT_DEGRADED_AFTER < u {
                    DEFAULT_DEGRADED_AFTER
                } else {
                    u / THRESHOLD_RATIO
                },
                unreachable_after: u,
            },
            (None, None) => Thresholds::default(),
        }
    }

    /// The thresholds of an effective policy.
    pub fn of(eff: &Effective) -> Self {
        Thresholds::new(eff.degraded_after, eff.unreachable_after)
    }
}

/// The health rule of the contract (§6), for an agent last heard from at `last` (`None`: never
/// since the last reset) and judged at `now`. Killed wins over everything; "late" means silent
/// for longer than `degraded_after`, "silent past" longer than `unreachable_after`.
pub fn judge(last: Option<Instant>, killed: bool, now: Instant, t: Thresholds) -> HealthState {
    if killed {
        return HealthState::Killed;
    }
    let Some(last) = last else {
        return HealthState::Unknown;
    };
    let silent = now.saturating_duration_since(last);
    if silent > t.unreachable_after {
        HealthState::Unreachable
    } else if silent > t.degraded_after {
        HealthState::Degraded
    } else {
        HealthState::Healthy
    }
}

/// Whether an instance last heard from at `last` counts as alive at `now`.
pub fn alive(last: Option<Instant>, now: Instant, t: Thresholds) -> bool {
    last.is_some_and(|l| now.saturating_duration_since(l) <= t.unreachable_after)
}

/// One instance of an agent.
#[derive(Debug, Default)]
struct Instance {
    /// When this replica last heard from it (monotonic, and ms since the epoch for records);
    /// `None` after a reset, until it beats again.
    last: Option<(Instant, u64)>,
    /// The last `Mesh-Cost-Total` it reported.
    total: f64,
    /// `total` when the agent was last reset: cost before it does not count any more.
    baseline: f64,
}

impl Instance {
    fn cost(&self) -> f64 {
        (self.total - self.baseline).max(0.0)
    }
}

/// One agent: its instances and the state last judged.
#[derive(Debug)]
struct Agent {
    instances: HashMap<String, Instance>,
    /// Cost of instances that restarted their counter or were forgotten, since the last reset.
    retired: f64,
    /// The state the last evaluation found (transitions are changes of it).
    state: HealthState,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            instances: HashMap::new(),
            retired: 0.0,
            state: HealthState::Unknown,
        }
    }
}

impl Agent {
    fn cost(&self) -> f64 {
        self.retired + self.instances.values().map(Instance::cost).sum::<f64>()
    }

    fn last(&self) -> Option<(Instant, u64)> {
        self.instances
            .values()
            .filter_map(|i| i.last)
            .max_by_key(|(at, _)| *at)
    }

    /// Forgets the longest-silent instance, keeping its cost.
    fn forget_one(&mut self) {
        let oldest = self
            .instances
            .iter()
            .min_by_key(|(_, i)| i.last.map(|(at, _)| at))
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            if let Some(gone) = self.instances.remove(&k) {
                self.retired += gone.cost();
            }
        }
    }
}

/// A heartbeat that was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untracked {
    #[error("already tracking {MAX_AGENTS} agents")]
    TooManyAgents,
}

/// What one evaluation found for one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub id: AgentId,
    pub state: HealthState,
    /// The state the evaluation before found.
    pub previous: HealthState,
    /// Instances heard from within `unreachable_after`.
    pub instances: u32,
    /// Last heartbeat from any instance, ms since the epoch (0: none since the last reset).
    pub last_heartbeat_unix_ms: u64,
    /// How long the agent has been silent (`None`: no heartbeat since the last reset).
    pub silent_for: Option<Duration>,
    pub cost: f64,
    pub thresholds: Thresholds,
}

impl Judged {
    pub fn changed(&self) -> bool {
        self.state != self.previous
    }
}

/// This replica's view of every agent's heartbeats. Every replica keeps one (all of them see
/// every heartbeat), so the reported cost is the same whichever replica delivers an intent.
#[derive(Debug, Default)]
pub struct HealthView {
    agents: Mutex<HashMap<AgentId, Agent>>,
}

impl HealthView {
    /// Records a heartbeat of `instance` of `id` at `now` (`now_ms` for records). `cost_total`
    /// is the instance's cumulative cost, when it reports one; a total lower than the previous
    /// one means the instance restarted its counter, and what it had reported is kept.
    pub fn beat(
        &self,
        id: &AgentId,
        instance: &str,
        cost_total: Option<f64>,
        now: Instant,
        now_ms: u64,
    ) -> Result<(), Untracked> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if !agents.contains_key(id) && agents.len() >= MAX_AGENTS {
            return Err(Untracked::TooManyAgents);
        }
        let agent = agents.entry(id.clone()).or_default();
        if !agent.instances.contains_key(instance) && agent.instances.len() >= MAX_INSTANCES {
            agent.forget_one();
        }
        let mut retired = 0.0;
        let inst = agent.instances.entry(instance.to_string()).or_default();
        inst.last = Some((now, now_ms));
        if let Some(total) = cost_total {
            if total < inst.total {
                retired = inst.cost();
                inst.baseline = 0.0;
            }
            inst.total = total;
        }
        agent.retired += retired;
        Ok(())
    }

    /// Cost reported by `id`'s instances since its counters were last reset, in USD.
    pub fn reported_cost(&self, id: &AgentId) -> f64 {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map_or(0.0, Agent::cost)
    }

    /// Forgets `id`'s health and reported cost (on resume): its state is `unknown` and no
    /// instance is alive until one beats again; cost reported so far no longer counts.
    pub fn reset(&self, id: &AgentId) {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(agent) = agents.get_mut(id) {
            for inst in agent.instances.values_mut() {
                inst.baseline = inst.total;
                inst.last = None;
            }
            agent.retired = 0.0;
            agent.state = HealthState::Unknown;
        }
    }

    /// The state the last evaluation found for `id` (`unknown` if never heard from).
    pub fn state(&self, id: &AgentId) -> HealthState {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map_or(HealthState::Unknown, |a| a.state)
    }

    /// Agents heard from, for the caller to look up their thresholds and kill state.
    pub fn agents(&self) -> Vec<AgentId> {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Judges every agent in `inputs` (id, thresholds, killed) at `now`, remembers the states
    /// and returns what it found. Agents not tracked (any more) are skipped.
    pub fn evaluate(
        &self,
        inputs: impl IntoIterator<Item = (AgentId, Thresholds, bool)>,
        now: Instant,
    ) -> Vec<Judged> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (id, t, killed) in inputs {
            let Some(agent) = agents.get_mut(&id) else {
                continue;
            };
            let last = agent.last();
            let state = judge(last.map(|(at, _)| at), killed, now, t);
            let instances = agent
                .instances
                .values()
                .filter(|i| alive(i.last.map(|(at, _)| at), now, t))
                .count();
            let previous = std::mem::replace(&mut agent.state, state);
            out.push(Judged {
                state,
                previous,
                instances: u32::try_from(instances).unwrap_or(u32::MAX),
                last_heartbeat_unix_ms: last.map_or(0, |(_, ms)| ms),
                silent_for: last.map(|(at, _)| now.saturating_duration_since(at)),
                cost: agent.cost(),
                thresholds: t,
                id,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).expect("valid id")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const T: Thresholds = Thresholds {
        degraded_after: Duration::from_millis(300),
        unreachable_after: Duration::from_millis(900),
    };

    #[test]
    fn judge_follows_the_thresholds() {
        let t0 = Instant::now();
        assert_eq!(judge(None, false, t0, T), HealthState::Unknown);
        assert_eq!(judge(Some(t0), false, t0, T), HealthState::Healthy);
        assert_eq!(
            judge(Some(t0), false, t0 + ms(300), T),
            HealthState::Healthy
        );
        assert_eq!(
            judge(Some(t0), false, t0 + ms(301), T),
            HealthState::Degraded
        );
        assert_eq!(
            judge(Some(t0), false, t0 + ms(900), T),
            HealthState::Degraded
        );
        assert_eq!(
            judge(Some(t0), false, t0 + ms(901), T),
            HealthState::Unreachable
        );
        // Killed wins, heard from or not.
        assert_eq!(judge(Some(t0), true, t0, T), HealthState::Killed);
        assert_eq!(judge(None, true, t0, T), HealthState::Killed);
        // A heartbeat stamped after `now` (a racing thread) is not "silent".
        assert_eq!(judge(Some(t0 + ms(5)), false, t0, T), HealthState::Healthy);
    }

    #[test]
    fn thresholds_default_and_stay_ordered() {
        assert_eq!(Thresholds::new(None, None), Thresholds::default());
        assert_eq!(
            Thresholds::new(Some(ms(300)), Some(ms(900))),
            Thresholds {
                degraded_after: ms(300),
                unreachable_after: ms(900)
            }
        );
        // Only degraded_after, longer than the default unreachable_after.
        let t = Thresholds::new(Some(Duration::from_secs(300)), None);
        assert_eq!(t.unreachable_after, Duration::from_secs(1200));
        // Only degraded_after, shorter: the default unreachable_after stays.
        let t = Thresholds::new(Some(ms(500)), None);
        assert_eq!(t.unreachable_after, DEFAULT_UNREACHABLE_AFTER);
        // Only unreachable_after, shorter than the default degraded_after.
        let t = Thresholds::new(None, Some(Duration::from_secs(8)));
        assert_eq!(t.degraded_after, Duration::from_secs(2));
        // Both, out of order (written behind validation's back): still ordered.
        let t = Thresholds::new(Some(Duration::from_secs(10)), Some(Duration::from_secs(5)));
        assert!(t.unreachable_after > t.degraded_after);
    }

    fn eval(view: &HealthView, who: &str, killed: bool, now: Instant) -> Judged {
        let mut got = view.evaluate([(id(who), T, killed)], now);
        assert_eq!(got.len(), 1, "{who} is tracked");
        got.remove(0)
    }

    #[test]
    fn an_agent_goes_healthy_degraded_unreachable_as_instances_stop() {
        let view = HealthView::default();
        let a = id("deployer");
        let t0 = Instant::now();
        view.beat(&a, "i1", None, t0, 1_000).expect("tracked");
        view.beat(&a, "i2", None, t0, 1_000).expect("tracked");
        let j = eval(&view, "deployer", false, t0 + ms(100));
        assert_eq!(
            (j.previous, j.state, j.instances),
            (HealthState::Unknown, HealthState::Healthy, 2)
        );
        // i2 stops; i1 keeps beating every 200 ms.
        let mut now = t0;
        for _ in 0..5 {
            now += ms(200);
            view.beat(&a, "i1", None, now, 0).expect("tracked");
        }
        let j = eval(&view, "deployer", false, now + ms(10));
        assert_eq!((j.state, j.instances), (HealthState::Healthy, 1));
        assert!(!j.changed());
        // i1 stops too.
        let j = eval(&view, "deployer", false, now + ms(301));
        assert_eq!(
            (j.previous, j.state, j.instances),
            (HealthState::Healthy, HealthState::Degraded, 1)
        );
        assert_eq!(j.silent_for, Some(ms(301)));
        let j = eval(&view, "deployer", false, now + ms(901));
        assert_eq!(
            (j.previous, j.state, j.instances),
            (HealthState::Degraded, HealthState::Unreachable, 0)
        );
        // It comes back.
        view.beat(&a, "i1", None, now + ms(1000), 0)
            .expect("tracked");
        let j = eval(&view, "deployer", false, now + ms(1001));
        assert_eq!(
            (j.previous, j.state, j.instances),
            (HealthState::Unreachable, HealthState::Healthy, 1)
        );
        assert_eq!(view.state(&a), HealthState::Healthy);
        // Killed wins.
        let j = eval(&view, "deployer", true, now + ms(1002));
        assert_eq!(j.state, HealthState::Killed);
    }

    #[test]
    fn reported_cost_sums_instances_since_the_last_reset() {
        let view = HealthView::default();
        let a = id("A");
        let t0 = Instant::now();
        assert_eq!(view.reported_cost(&a), 0.0);
        view.beat(&a, "i1", Some(1.5), t0, 0).expect("tracked");
        view.beat(&a, "i2", Some(2.0), t0, 0).expect("tracked");
        // A heartbeat without a cost keeps the last total.
        view.beat(&a, "i2", None, t0, 0).expect("tracked");
        assert_eq!(view.reported_cost(&a), 3.5);

        view.reset(&a);
        assert_eq!(view.reported_cost(&a), 0.0);
        let j = eval(&view, "A", false, t0 + ms(1));
        assert_eq!((j.state, j.instances), (HealthState::Unknown, 0));

        view.beat(&a, "i1", Some(2.5), t0 + ms(2), 0)
            .expect("tracked");
        view.beat(&a, "i3", Some(0.25), t0 + ms(2), 0)
            .expect("tracked");
        assert_eq!(view.reported_cost(&a), 1.25);
        let j = eval(&view, "A", false, t0 + ms(3));
        assert_eq!((j.state, j.instances), (HealthState::Healthy, 2));

        // i1 restarts its counter: what it reported is kept, the new total adds to it.
        view.beat(&a, "i1", Some(0.5), t0 + ms(4), 0)
            .expect("tracked");
        assert_eq!(view.reported_cost(&a), 1.0 + 0.25 + 0.5);
        view.reset(&a);
        assert_eq!(view.reported_cost(&a), 0.0);
    }

    #[test]
    fn instances_and_agents_are_bounded() {
        let view = HealthView::default();
        let a = id("A");
        let t0 = Instant::now();
        for i in 0..MAX_INSTANCES {
            view.beat(&a, &format!("i{i}"), Some(1.0), t0 + ms(i as u64), 0)
                .expect("tracked");
        }
        // One more forgets the longest-silent instance (i0) but keeps its cost.
        view.beat(&a, "new", Some(1.0), t0 + ms(5_000), 0)
            .expect("tracked");
        let j = eval(&view, "A", false, t0 + ms(5_000));
        assert_eq!(
            j.instances, 1,
            "only the new instance beat within unreachable_after"
        );
        assert_eq!(view.reported_cost(&a), (MAX_INSTANCES + 1) as f64);

        let many = HealthView::default();
        for i in 0..MAX_AGENTS {
            many.beat(&id(&format!("a{i}")), "i", None, t0, 0)
                .expect("tracked");
        }
        assert_eq!(
            many.beat(&id("one-too-many"), "i", None, t0, 0),
            Err(Untracked::TooManyAgents)
        );
        many.beat(&id("a0"), "i", None, t0, 0)
            .expect("a known agent still beats");
    }
}
