//! Health from heartbeats. Each agent instance publishes `<prefix>.hb.<agent>` every few seconds
//! with `Mesh-Instance` and, optionally, its cumulative cost in `Mesh-Cost-Total`. Every replica
//! follows all heartbeats (core NATS) into its [`HealthView`], so the cost an agent reported
//! counts against its ceilings whichever replica delivers its intents.
//!
//! Every `min(250 ms, degraded_after / 4)` (at least 50 ms) each replica judges every agent it
//! has heard from, by the most recent heartbeat of any of its instances:
//!
//! | state | when |
//! |---|---|
//! | `killed` | its kill flag is set (wins over everything else) |
//! | `unknown` | never heard from (or not since `mesh-cli resume`) |
//! | `healthy` | last heartbeat at most `degraded_after` ago (default [`DEFAULT_DEGRADED_AFTER`], 30 s) |
//! | `degraded` | silent for longer than `degraded_after` |
//! | `unreachable` | silent for longer than `unreachable_after` (default [`DEFAULT_UNREACHABLE_AFTER`], 120 s) |
//!
//! An instance is alive while it was heard from within `unreachable_after`. Only the leading
//! replica ([`Shared::is_leader`]) acts on what it finds (see [`leader`]). Nothing is judged until
//! the replica knows the kill flags and the policies: a guess could alert or kill wrongly.
//!
//! - [`view`]: the per-agent, per-instance state and the pure rules (testable with any `now`).
//! - [`heartbeat`]: reading one heartbeat; a log throttle for the bad ones.
//! - [`leader`]: alerts, audit records, `on_unreachable`, records in `mesh-health`.

pub mod heartbeat;
pub mod leader;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mesh_schemas::now_unix_ms;

use crate::shared::Shared;
use heartbeat::Throttle;
pub use view::{
    judge, HealthView, Judged, Thresholds, DEFAULT_DEGRADED_AFTER, DEFAULT_UNREACHABLE_AFTER,
};

/// The longest time between two evaluations.
pub const EVAL_PERIOD: Duration = Duration::from_millis(250);
/// The shortest time between two evaluations, whatever the thresholds.
pub const MIN_EVAL_PERIOD: Duration = Duration::from_millis(50);
/// At most one log line per this interval for each kind of ignored heartbeat.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The time between evaluations for agents with these `degraded_after` thresholds: a quarter
/// of the shortest, between [`MIN_EVAL_PERIOD`] and [`EVAL_PERIOD`]. A state change is seen at
/// most one period after its threshold passes.
pub fn eval_period(degraded_after: impl IntoIterator<Item = Duration>) -> Duration {
    degraded_after
        .into_iter()
        .map(|d| d / 4)
        .fold(EVAL_PERIOD, Duration::min)
        .max(MIN_EVAL_PERIOD)
}

/// Follows heartbeats and judges health until the gateway stops.
pub async fn run(shared: Arc<Shared>) {
    tokio::join!(follow(&shared), evaluate(&shared));
}

/// Records every heartbeat into the view; ignores (and logs, throttled) those that break the
/// rules. Resubscribes if the subscription ends.
async fn follow(shared: &Shared) {
    let prefix = shared.subjects.prefix().to_string();
    let subject = format!("{prefix}.hb.*");
    let mut bad = Throttle::new(LOG_EVERY);
    let mut untracked = Throttle::new(LOG_EVERY);
    let mut backoff = Duration::from_millis(100);
    loop {
        match shared.client.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                backoff = Duration::from_millis(100);
                loop {
                    let msg = tokio::select! {
                        m = sub.next() => m,
                        _ = shared.cancel.cancelled() => {
                            let _ = sub.unsubscribe().await;
                            return;
                        }
                    };
                    let Some(msg) = msg else { break };
                    let now = Instant::now();
                    let hb = match heartbeat::parse(&prefix, &msg.subject, msg.headers.as_ref()) {
                        Ok(hb) => hb,
                        Err(e) => {
                            if let Some(held) = bad.allow(now) {
                                tracing::warn!(subject = %msg.subject, error = %e, suppressed = held,
                                    "heartbeat ignored");
                            }
                            continue;
                        }
                    };
                    let beat = shared.health.beat(
                        &hb.agent,
                        &hb.instance,
                        hb.cost_total,
                        now,
                        now_unix_ms(),
                    );
                    if let Err(e) = beat {
                        if let Some(held) = untracked.allow(now) {
                            tracing::warn!(agent = %hb.agent, error = %e, suppressed = held,
                                "heartbeat of a new agent ignored");
                        }
                    }
                }
                tracing::warn!(subject, "heartbeat subscription ended; subscribing again");
            }
            Err(e) => tracing::warn!(subject, error = %e, "cannot subscribe to heartbeats"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Judges every agent heard from, periodically; the leader acts on what changed.
async fn evaluate(shared: &Shared) {
    let mut leader = leader::Leader::default();
    let mut period = EVAL_PERIOD;
    let mut tick = ticker(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.cancel.cancelled() => return,
        }
        if !shared.gates.is_ready() || !shared.policies.is_ready() {
            continue;
        }
        let inputs: Vec<_> = shared
            .health
            .agents()
            .into_iter()
            .map(|id| {
                let t = Thresholds::of(&shared.policies.effective(&id));
                let killed = shared.gates.get(&id).is_killed();
                (id, t, killed)
            })
            .collect();
        let now = Instant::now();
        let judged = shared.health.evaluate(inputs, now);
        leader.act(shared, &judged, shared.is_leader(), now).await;
        let want = eval_period(judged.iter().map(|j| j.thresholds.degraded_after));
        if want != period {
            period = want;
            tick = ticker(period);
        }
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_period_follows_the_shortest_threshold() {
        let ms = Duration::from_millis;
        assert_eq!(eval_period([]), EVAL_PERIOD);
        assert_eq!(eval_period([Duration::from_secs(30)]), EVAL_PERIOD);
        assert_eq!(eval_period([ms(300), Duration::from_secs(30)]), ms(75));
        assert_eq!(eval_period([ms(100)]), MIN_EVAL_PERIOD);
    }
}
