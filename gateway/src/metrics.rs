//! What a replica counts for Prometheus: the data path bumps counters and histograms as it goes
//! ([`Metrics`]); the states (role, NATS connection, fail-closed readiness, parked recipients,
//! health states) are read when `/metrics` is scraped ([`Snapshot`]), so they are never stale.
//!
//! Every label takes a few fixed values (a status code, a reason class, a policy rule): nothing
//! is labelled by agent, so the series stay bounded however many agents there are.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::data::reject::Refusal;

/// Labels of a rejection: its status and a reason class (never the free-text reason).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub status: &'static str,
    pub reason: &'static str,
}

/// Labels of a policy breach: the rule and what `on_breach` did about it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreachLabels {
    pub rule: &'static str,
    pub action: &'static str,
}

/// One label: why a delivery attempt failed, or a state's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Named {
    pub name: &'static str,
}

/// Labels of the role gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

/// Labels of the health gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// A replica's metrics; one per replica, shared by its tasks.
pub struct Metrics {
    /// Owns the text encoding of every family below.
    registry: Registry,
    /// Intents acknowledged by their recipient.
    pub delivered: Counter,
    /// Intents rejected, by status and reason class.
    pub rejected: Family<RejectLabels, Counter>,
    /// Deliveries handed back because the recipient was killed (the intent waits, unacked).
    pub held: Counter,
    /// Delivery attempts that found no responder or no reply in time.
    pub failed: Family<Named, Counter>,
    /// Requests to agents' inboxes outstanding now.
    pub in_flight: Gauge,
    /// From sending the request to the agent's reply, for delivered intents.
    pub delivery_seconds: Histogram,
    /// From a kill-flag change reaching this replica to its fence ack.
    pub fence_seconds: Histogram,
    /// Policy breaches, by rule and `on_breach` action.
    pub breaches: Family<BreachLabels, Counter>,
    /// Scrape-time states, set from a [`Snapshot`] just before encoding.
    role: Family<RoleLabels, Gauge>,
    nats_connected: Gauge,
    kill_state_known: Gauge,
    policies_known: Gauge,
    ready: Gauge,
    parked: Gauge,
    killed: Gauge,
    pending: Gauge,
    unacked: Gauge,
    health: Family<StateLabels, Gauge>,
    /// The `Nats-Pin-Id` of the last message this replica's lane received: if the shared
    /// consumer is pinned to it, this replica is the active one.
    pin_id: Mutex<Option<String>>,
}

/// States read at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `Some(true)` active, `Some(false)` standby, `None` unknown (the consumer is unreadable).
    pub active: Option<bool>,
    pub nats_connected: bool,
    /// The kill-flag watch has replayed and is current, and this replica's presence is fresh.
    pub kill_state_known: bool,
    pub policies_known: bool,
    /// The replica is shutting down: it takes no new work.
    pub draining: bool,
    /// Recipients parked on consumers of their own that this replica drains.
    pub parked: usize,
    /// Agents this replica knows as killed.
    pub killed: usize,
    /// Intents waiting in the stream for the shared lane, and those it holds unacknowledged
    /// (mesh-wide, read from the shared consumer); `None` when it cannot be read.
    pub pending: Option<(u64, u64)>,
    /// Agents by health state (healthy, degraded, unreachable, killed).
    pub health: Vec<(&'static str, usize)>,
}

impl Snapshot {
    /// Whether the replica may deliver: `/readyz` is 200 only then.
    pub fn ready(&self) -> bool {
        self.nats_connected && self.kill_state_known && self.policies_known && !self.draining
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("mesh_gateway");
        let delivered = Counter::default();
        r.register(
            "intents_delivered",
            "Intents acknowledged by their recipient",
            delivered.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        r.register(
            "intents_rejected",
            "Intents rejected, by status and reason class",
            rejected.clone(),
        );
        let held = Counter::default();
        r.register(
            "intents_held",
            "Deliveries handed back because the recipient is killed",
            held.clone(),
        );
        let failed = Family::<Named, Counter>::default();
        r.register(
            "delivery_failures",
            "Delivery attempts without a reply, by why (no_responders, timeout, error)",
            failed.clone(),
        );
        let in_flight = Gauge::default();
        r.register(
            "deliveries_in_flight",
            "Requests to agents' inboxes outstanding",
            in_flight.clone(),
        );
        // 0.5 ms to about 16 s.
        let delivery_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        r.register(
            "delivery_duration_seconds",
            "From the request to the agent's reply, for delivered intents",
            delivery_seconds.clone(),
        );
        let fence_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        r.register(
            "fence_duration_seconds",
            "From a kill-flag change reaching this replica to its fence ack",
            fence_seconds.clone(),
        );
        let breaches = Family::<BreachLabels, Counter>::default();
        r.register(
            "policy_breaches",
            "Policy breaches, by rule and on_breach action",
            breaches.clone(),
        );
        let role = Family::<RoleLabels, Gauge>::default();
        r.register(
            "role",
            "1 for this replica's role: active (holds the shared lane's pin), standby or unknown",
            role.clone(),
        );
        let nats_connected = Gauge::default();
        r.register(
            "nats_connected",
            "1 while connected to NATS",
            nats_connected.clone(),
        );
        let kill_state_known = Gauge::default();
        r.register(
            "kill_state_known",
            "1 while the kill flags are replayed and current and the presence is fresh; 0 is failing closed",
            kill_state_known.clone(),
        );
        let policies_known = Gauge::default();
        r.register(
            "policies_known",
            "1 once the policies are replayed",
            policies_known.clone(),
        );
        let ready = Gauge::default();
        r.register(
            "ready",
            "1 while the replica may deliver (what /readyz reports)",
            ready.clone(),
        );
        let parked = Gauge::default();
        r.register(
            "parked_recipients",
            "Recipients parked on consumers of their own that this replica drains",
            parked.clone(),
        );
        let killed = Gauge::default();
        r.register(
            "agents_killed",
            "Agents this replica knows as killed",
            killed.clone(),
        );
        let pending = Gauge::default();
        r.register(
            "intents_pending",
            "Intents waiting in the stream for the shared lane (mesh-wide; parked recipients' intents excluded)",
            pending.clone(),
        );
        let unacked = Gauge::default();
        r.register(
            "intents_unacked",
            "Intents the shared lane holds unacknowledged (mesh-wide: queued or in flight)",
            unacked.clone(),
        );
        let health = Family::<StateLabels, Gauge>::default();
        r.register(
            "agents_by_health",
            "Agents by health state, as this replica's heartbeat view judges them",
            health.clone(),
        );
        Metrics {
            registry: r,
            delivered,
            rejected,
            held,
            failed,
            in_flight,
            delivery_seconds,
            fence_seconds,
            breaches,
            role,
            nats_connected,
            kill_state_known,
            policies_known,
            ready,
            parked,
            killed,
            pending,
            unacked,
            health,
            pin_id: Mutex::new(None),
        }
    }

    /// Counts a rejection.
    pub fn rejected(&self, refusal: &Refusal) {
        self.rejected
            .get_or_create(&RejectLabels {
                status: status_label(refusal.status()),
                reason: reason_class(refusal),
            })
            .inc();
    }

    /// Counts a breach of `rule` handled by `action` (`kill`, `block`, `observe`).
    pub fn breach(&self, rule: &'static str, action: &'static str) {
        self.breaches
            .get_or_create(&BreachLabels { rule, action })
            .inc();
    }

    /// Counts a failed delivery attempt.
    pub fn failed(&self, why: &'static str) {
        self.failed.get_or_create(&Named { name: why }).inc();
    }

    /// Counts a request in flight until the guard is dropped (also when the future is).
    pub fn in_flight(&self) -> InFlightGuard<'_> {
        self.in_flight.inc();
        InFlightGuard(&self.in_flight)
    }

    /// Observes a duration in `h`.
    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }

    /// Remembers the pin id of a message from the shared consumer.
    pub fn saw_pin(&self, pin: Option<&str>) {
        let Some(pin) = pin else { return };
        let mut slot = self.pin_id.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_deref() != Some(pin) {
            *slot = Some(pin.to_string());
        }
    }

    /// The pin id this replica last received with.
    pub fn pin_id(&self) -> Option<String> {
        self.pin_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The text exposition of every metric, with the states of `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let flag = |b: bool| i64::from(b);
        for (role, on) in [
            ("active", snap.active == Some(true)),
            ("standby", snap.active == Some(false)),
            ("unknown", snap.active.is_none()),
        ] {
            self.role.get_or_create(&RoleLabels { role }).set(flag(on));
        }
        self.nats_connected.set(flag(snap.nats_connected));
        self.kill_state_known.set(flag(snap.kill_state_known));
        self.policies_known.set(flag(snap.policies_known));
        self.ready.set(flag(snap.ready()));
        self.parked.set(count(snap.parked));
        self.killed.set(count(snap.killed));
        if let Some((pending, unacked)) = snap.pending {
            self.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
            self.unacked.set(i64::try_from(unacked).unwrap_or(i64::MAX));
        }
        for (state, n) in &snap.health {
            self.health
                .get_or_create(&StateLabels { state })
                .set(count(*n));
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }
}

/// Leaves the in-flight gauge on drop.
pub struct InFlightGuard<'a>(&'a Gauge);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        403 => "403",
        429 => "429",
        _ => "other",
    }
}

/// A rejection's reason, folded into a few classes: `invalid`, `sender_killed`, `not_allowed`,
/// `forbidden` (any other 403), `limited`.
pub fn reason_class(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::Invalid(_) => "invalid",
        Refusal::Forbidden(r) if r.contains(" is killed") => "sender_killed",
        Refusal::Forbidden(r) if r.starts_with("not allowed by policy") => "not_allowed",
        Refusal::Forbidden(_) => "forbidden",
        Refusal::Limited(_) => "limited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_counters_histograms_and_states() {
        let m = Metrics::new();
        m.delivered.inc();
        m.rejected(&Refusal::Forbidden("sender a is killed: r".into()));
        m.breach("hourly_cap", "block");
        Metrics::observe(&m.delivery_seconds, Duration::from_millis(3));
        drop(m.in_flight());
        let text = m.render(&Snapshot {
            active: Some(true),
            nats_connected: true,
            kill_state_known: true,
            policies_known: true,
            draining: false,
            parked: 2,
            killed: 1,
            pending: Some((7, 2)),
            health: vec![("healthy", 3)],
        });
        for line in [
            "mesh_gateway_intents_delivered_total 1",
            "mesh_gateway_intents_rejected_total{status=\"403\",reason=\"sender_killed\"} 1",
            "mesh_gateway_policy_breaches_total{rule=\"hourly_cap\",action=\"block\"} 1",
            "mesh_gateway_delivery_duration_seconds_count 1",
            "mesh_gateway_deliveries_in_flight 0",
            "mesh_gateway_role{role=\"active\"} 1",
            "mesh_gateway_role{role=\"standby\"} 0",
            "mesh_gateway_ready 1",
            "mesh_gateway_parked_recipients 2",
            "mesh_gateway_intents_pending 7",
            "mesh_gateway_intents_unacked 2",
            "mesh_gateway_agents_by_health{state=\"healthy\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn not_ready_while_any_part_is_missing() {
        let all = Snapshot {
            nats_connected: true,
            kill_state_known: true,
            policies_known: true,
            ..Snapshot::default()
        };
        assert!(all.ready());
        for snap in [
            Snapshot {
                nats_connected: false,
                ..all.clone()
            },
            Snapshot {
                kill_state_known: false,
                ..all.clone()
            },
            Snapshot {
                policies_known: false,
                ..all.clone()
            },
            Snapshot {
                draining: true,
                ..all.clone()
            },
        ] {
            assert!(!snap.ready(), "{snap:?}");
        }
    }
}
