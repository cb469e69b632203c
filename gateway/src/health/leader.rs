//! What the leading replica does with an evaluation, so that two replicas never double-alert:
//! alert events on `<prefix>.event.<state>.<agent>` and `health` audit records on transitions,
//! `on_unreachable = kill`, and the records in `mesh-health` that `mesh-cli status` reads.
//!
//! Every replica judges health (so a new leader knows the current states), but only the leader
//! acts. When a replica becomes leader it compares its states with the records the previous
//! leader wrote, and acts on the differences: a transition the old leader missed is not lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_schemas::{
    decode, encode, AgentId, AuditEvent, AuditKind, HealthRecord, HealthState, OnUnreachable,
};

use super::heartbeat::Throttle;
use super::view::Judged;
use crate::shared::Shared;

/// How often a record is rewritten when only its last heartbeat or cost moved (a change of
/// state or instance count is written at once).
pub const RECORD_REFRESH: Duration = Duration::from_secs(5);

/// What this replica last wrote to `mesh-health` for one agent.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    state: HealthState,
    instances: u32,
    last_heartbeat_unix_ms: u64,
    cost: f64,
    at: Instant,
}

/// The leader's memory between evaluations.
#[derive(Debug)]
pub(super) struct Leader {
    /// Whether this replica led at the last evaluation.
    leading: bool,
    /// Records written while leading; cleared when leadership is lost.
    written: HashMap<AgentId, Written>,
    /// Log throttle for failed record writes (they are retried at every evaluation).
    write_log: Throttle,
    /// Reported cost at which each agent's ceilings were last checked.
    cost_checked: HashMap<AgentId, f64>,
}

impl Default for Leader {
    fn default() -> Self {
        Leader {
            leading: false,
            written: HashMap::new(),
            write_log: Throttle::new(super::LOG_EVERY),
            cost_checked: HashMap::new(),
        }
    }
}

/// Whether going from `from` to `to` deserves an alert: into degraded or unreachable, and back
/// to healthy from either.
pub fn alerts(from: HealthState, to: HealthState) -> bool {
    match to {
        HealthState::Degraded | HealthState::Unreachable => from != to,
        HealthState::Healthy => matches!(from, HealthState::Degraded | HealthState::Unreachable),
        _ => false,
    }
}

impl Leader {
    /// Acts on one evaluation; `leading` says whether this replica leads now.
    pub async fn act(&mut self, shared: &Shared, judged: &[Judged], leading: bool, now: Instant) {
        if !leading {
            if self.leading {
                tracing::info!("no longer leading health checks");
            }
            self.leading = false;
            self.written.clear();
            return;
        }
        let taking_over = !self.leading;
        if taking_over {
            tracing::info!(agents = judged.len(), "leading health checks from now on");
        }
        self.leading = true;
        for j in judged {
            // On take-over, the previous leader's record says what was last acted on.
            let from = if taking_over {
                recorded_state(shared, &j.id).await.unwrap_or(j.previous)
            } else {
                j.previous
            };
            self.write(shared, j, now).await;
            if from != j.state {
                transition(shared, j, from).await;
            }
            if j.cost > 0.0 && j.state != HealthState::Killed {
                self.check_reported_cost(shared, j).await;
            }
        }
    }

    /// An agent that only reports cost in heartbeats must still hit its ceiling without sending
    /// another intent: when its reported cost moves, compare it (plus what intents counted)
    /// with the ceilings, and kill when the policy says so.
    async fn check_reported_cost(&mut self, shared: &Shared, j: &Judged) {
        if self.cost_checked.get(&j.id) == Some(&j.cost) {
            return;
        }
        let eff = shared.policies.effective(&j.id);
        let p = &eff.policy;
        if p.max_cost_usd.is_none() && p.max_cost_usd_per_day.is_none() {
            return;
        }
        let Ok((day, total)) = shared.budget.cost(&j.id).await else {
            return; // Counters unreadable: try again at the next evaluation.
        };
        self.cost_checked.insert(j.id.clone(), j.cost);
        let breach = [
            ("max_cost_usd", p.max_cost_usd, total),
            ("max_cost_usd_per_day", p.max_cost_usd_per_day, day),
        ]
        .into_iter()
        .find_map(|(rule, ceiling, counted)| {
            let ceiling = ceiling?;
            (counted + j.cost > ceiling + 1e-9).then(|| {
                (
                    rule,
                    format!(
                        "{} reported ${:.2} in heartbeats (plus ${counted:.2} counted from intents) against {rule} = ${ceiling:.2}",
                        j.id, j.cost
                    ),
                )
            })
        });
        if let Some((rule, detail)) = breach {
            if p.on_breach.unwrap_or_default() == mesh_schemas::OnBreach::Kill {
                crate::policy::autokill::kill(shared, &j.id, rule, &detail).await;
            } else {
                // block and observe act on the agent's next intent, which the budget refuses.
                tracing::info!(agent = %j.id, rule, detail, "cost ceiling reached by reported cost");
            }
        }
    }

    /// Writes `j`'s record when its state or instance count changed, or every
    /// [`RECORD_REFRESH`] when only its last heartbeat or cost moved.
    async fn write(&mut self, shared: &Shared, j: &Judged, now: Instant) {
        let due = match self.written.get(&j.id) {
            None => true,
            Some(w) => {
                w.state != j.state
                    || w.instances != j.instances
                    || ((w.last_heartbeat_unix_ms != j.last_heartbeat_unix_ms || w.cost != j.cost)
                        && now.saturating_duration_since(w.at) >= RECORD_REFRESH)
            }
        };
        if !due {
            return;
        }
        let record = HealthRecord::new(
            j.id.as_str(),
            j.state,
            j.instances,
            j.last_heartbeat_unix_ms,
            j.cost,
        );
        let put = match encode(&record) {
            Ok(bytes) => shared
                .objects
                .health
                .put(j.id.as_str(), bytes.into())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match put {
            Ok(_) => {
                self.written.insert(
                    j.id.clone(),
                    Written {
                        state: j.state,
                        instances: j.instances,
                        last_heartbeat_unix_ms: j.last_heartbeat_unix_ms,
                        cost: j.cost,
                        at: now,
                    },
                );
            }
            Err(e) => {
                if let Some(held) = self.write_log.allow(now) {
                    tracing::warn!(agent = %j.id, error = %e, suppressed = held,
                        "could not write the health record; retrying at the next evaluation");
                }
            }
        }
    }
}

/// The state in `j.id`'s record in `mesh-health`, if it has a readable one.
async fn recorded_state(shared: &Shared, id: &AgentId) -> Option<HealthState> {
    let bytes = shared.objects.health.get(id.as_str()).await.ok()??;
    decode::<HealthRecord>(&bytes).ok().map(|r| r.state)
}

/// Alerts and records a transition of `j.id` from `from`, and applies `on_unreachable`.
async fn transition(shared: &Shared, j: &Judged, from: HealthState) {
    tracing::info!(agent = %j.id, from = from.as_str(), to = j.state.as_str(),
        instances = j.instances, "health changed");
    if alerts(from, j.state) {
        alert(shared, j, from).await;
    }
    if j.state == HealthState::Unreachable {
        let eff = shared.policies.effective(&j.id);
        if eff.policy.on_unreachable == Some(OnUnreachable::Kill) {
            let detail = format!(
                "no heartbeat for {} (unreachable_after {})",
                human(j.silent_for.unwrap_or_default()),
                human(j.thresholds.unreachable_after)
            );
            crate::policy::autokill::kill(shared, &j.id, "on_unreachable", &detail).await;
        }
    }
}

/// The alert event (core NATS, best effort) and its audit record (durable, deduplicated).
async fn alert(shared: &Shared, j: &Judged, from: HealthState) {
    let silent = human(j.silent_for.unwrap_or_default());
    let reason = match j.state {
        HealthState::Degraded => format!(
            "degraded: no heartbeat for {silent} (degraded_after {})",
            human(j.thresholds.degraded_after)
        ),
        HealthState::Unreachable => format!(
            "unreachable: no heartbeat for {silent} (unreachable_after {}); its intents wait",
            human(j.thresholds.unreachable_after)
        ),
        _ => format!(
            "healthy again: heartbeats on time, {} instance(s) alive",
            j.instances
        ),
    };
    let mut event = AuditEvent::new(
        AuditKind::Health,
        j.id.as_str(),
        format!("gateway:{}", shared.gateway_id),
        reason,
    );
    event.detail = Some(format!(
        "state={} from={} instances={} last_heartbeat_unix_ms={} reported_cost_usd={}",
        j.state.as_str(),
        from.as_str(),
        j.instances,
        j.last_heartbeat_unix_ms,
        j.cost
    ));
    let subject = shared
        .cfg
        .names
        .event_subject(j.state.as_str(), j.id.as_str());
    match encode(&event) {
        Ok(bytes) => {
            if let Err(e) = shared.client.publish(subject, bytes.into()).await {
                tracing::warn!(agent = %j.id, error = %e, "could not publish the health alert");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode the health alert"),
    }
    let dedup = format!(
        "health-{}-{}-{}",
        j.id,
        j.state.as_str(),
        j.last_heartbeat_unix_ms
    );
    if let Err(e) = shared.rejector.audit(&event, &dedup).await {
        tracing::warn!(agent = %j.id, error = %e, "could not record the health change");
    }
}

/// A duration for people, to the millisecond.
fn human(d: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::*;

    #[test]
    fn alerts_into_degraded_and_unreachable_and_back_to_healthy() {
        assert!(alerts(Healthy, Degraded));
        assert!(alerts(Degraded, Unreachable));
        assert!(alerts(Healthy, Unreachable));
        assert!(alerts(Unknown, Unreachable));
        assert!(alerts(Degraded, Healthy));
        assert!(alerts(Unreachable, Healthy));
        // First sight, a kill, a resume: no alert.
        assert!(!alerts(Unknown, Healthy));
        assert!(!alerts(Healthy, Killed));
        assert!(!alerts(Killed, Unknown));
        assert!(!alerts(Killed, Healthy));
        assert!(!alerts(Degraded, Degraded));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_micros(412_345)), "412ms");
        assert_eq!(human(Duration::from_millis(1_200)), "1s 200ms");
    }
}
