//! The control path: a KV watch of `mesh-kill` is the only source of kill state. Each change is
//! applied to the agent's gate, fenced (in-flight deliveries finished, held work handed back) and
//! confirmed on `mesh.gw.fenced.<id>`; the recipient's consumer is paused or resumed so that the
//! hold lives in NATS, not only here.
//!
//! Until the watch has replayed every flag, and whenever it breaks, the gateway delivers nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Entry, Operation};
use futures::StreamExt;
use mesh_schemas::{decode, encode, AgentId, FenceAck, KillRecord, KillState};

use crate::control::gate::GateState;
use crate::setup;
use crate::shared::Shared;

/// Runs until the gateway stops, re-establishing the watch whenever it breaks.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        shared.gates.set_unknown();
        match watch_once(&shared).await {
            Ok(()) => return,
            Err(why) => {
                tracing::error!(
                    why,
                    "kill-flag watch broken; delivering nothing until it is back"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One watch: replay every flag, mark ready, then follow changes. `Ok` only on shutdown.
///
/// A KV watch can go quiet without an error: async-nats recreates the watch's ordered consumer
/// by itself after a reconnect or a lost consumer, retrying without limit, with request timeouts
/// and back-off of up to 10 s each, while yielding nothing. So the watch is not trusted on its
/// own: every `presence_interval` the bucket's last sequence is read, and the watch must have
/// reached the sequence read one check earlier. Until a check proves that, after a reconnect,
/// and while the bucket cannot be read, the replica delivers nothing (see [`Liveness`]).
async fn watch_once(shared: &Arc<Shared>) -> Result<(), String> {
    let kv = &shared.objects.kill;
    let bucket = &shared.cfg.names.kill_bucket;
    let connects = connects(&shared.client);
    // Listed again after a lapse from now on: kills written meanwhile did not wait for this
    // replica, so this watch proves nothing about them and must replay (`Gates::set_known`).
    let relisted = shared.gates.relisted();
    // Read before the watch starts: once the replay is over, the watch has seen everything up
    // to here (a revision removed meanwhile is not replayed, but nothing is missed either).
    // Fresh from the server: `kv.status()` only returns the stream info cached when the bucket
    // was opened, which would make a bucket that was empty then look empty for ever.
    let state = kv
        .stream
        .get_info()
        .await
        .map_err(|e| format!("cannot read {bucket}: {e}"))?
        .state;
    let before = state.last_sequence;
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| format!("cannot watch {bucket}: {e}"))?;
    let mut seen: HashSet<AgentId> = HashSet::new();
    let mut live = Liveness::new(shared.cfg.presence_interval);
    let mut replaying = true;
    let mut behind_logged = false;
    // An empty bucket replays nothing, so nothing would tell us the replay is over.
    if state.messages == 0 {
        live.replayed(before);
        if !finish_replay(shared, &seen, relisted) {
            return Err(RELISTED.to_string());
        }
        replaying = false;
    }
    let mut check = tokio::time::interval(shared.cfg.presence_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let entry = tokio::select! {
            // Entries first: one waiting in the buffer must count before a check judges.
            biased;
            e = watch.next() => e,
            _ = shared.cancel.cancelled() => return Ok(()),
            _ = disconnected(&shared.client) => {
                // Changes may have been missed while cut off: replay before delivering again.
                return Err("disconnected from NATS".to_string());
            }
            _ = check.tick() => {
                if self::connects(&shared.client) != connects {
                    // A reconnect shorter than the state poll: the watch may have lost its
                    // consumer, and changes may have been missed meanwhile.
                    return Err("reconnected to NATS".to_string());
                }
                let last = last_revision(kv, shared.cfg.presence_interval).await;
                let verdict = live.check(last, Instant::now());
                if !replaying && !shared.gates.set_known(verdict.fresh, relisted) {
                    return Err(RELISTED.to_string());
                }
                if let Some(why) = verdict.stalled {
                    return Err(why);
                }
                continue;
            }
        };
        let entry = match entry {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(format!("watch error: {e}")),
            None => return Err("watch ended".to_string()),
        };
        let caught_up = entry.delta == 0;
        live.saw(entry.revision);
        if let Some(id) = apply(shared, &entry) {
            seen.insert(id);
        }
        if replaying && caught_up && live.seen < before {
            // The replay ended short of the revision the stream leader had before the watch
            // started: its consumer reads a copy of the bucket that is behind (a node that has
            // just come back). That is not the current state: wait for the rest, or for a
            // check to find the watch stalled and start it again.
            if !behind_logged {
                tracing::warn!(
                    seen = live.seen,
                    leader_had = before,
                    "kill-flag replay came from a copy that is behind; waiting for the rest"
                );
                behind_logged = true;
            }
            continue;
        }
        if replaying && caught_up {
            live.replayed(before);
            if !finish_replay(shared, &seen, relisted) {
                return Err(RELISTED.to_string());
            }
            replaying = false;
        }
    }
}

/// The bucket's last revision (its stream's last sequence), read from the stream leader, within
/// `limit` so that a check never blocks the watch for long.
async fn last_revision(
    kv: &async_nats::jetstream::kv::Store,
    limit: Duration,
) -> Result<u64, String> {
    match tokio::time::timeout(limit, kv.stream.get_info()).await {
        Ok(Ok(info)) => Ok(info.state.last_sequence),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Successful connections of `client` so far: a change means it reconnected.
pub(crate) fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the watch keeps up with the bucket, judged from periodic reads of its last revision.
#[derive(Debug)]
struct Liveness {
    /// The highest revision the watch has delivered (or, after the replay, covered).
    seen: u64,
    /// The last revision read at the previous check, and when: the watch must reach it.
    target: Option<(u64, Instant)>,
    /// When the watch was last proven current: it had reached a revision read at that time.
    proven: Option<Instant>,
    /// How long a proof holds.
    lease: Duration,
    /// The last check could not read the bucket (logged once per run of failures).
    unreadable: bool,
}

/// The outcome of one check.
#[derive(Debug, PartialEq)]
struct Verdict {
    /// Whether the replica may deliver: the watch was proven current within the lease.
    fresh: bool,
    /// Set when the watch is behind a revision the bucket had a whole check ago: restart it.
    stalled: Option<String>,
}

impl Liveness {
    /// Checks run every `interval`; a proof holds for three of them.
    fn new(interval: Duration) -> Self {
        Liveness {
            seen: 0,
            target: None,
            proven: None,
            lease: interval * 3,
            unreadable: false,
        }
    }

    fn saw(&mut self, revision: u64) {
        self.seen = self.seen.max(revision);
    }

    /// The replay is over: everything up to `before` (read before the watch started) is seen.
    fn replayed(&mut self, before: u64) {
        self.saw(before);
        self.proven = Some(Instant::now());
    }

    /// One check, with the bucket's last revision as read now (or why it could not be read).
    fn check(&mut self, last: Result<u64, String>, now: Instant) -> Verdict {
        let mut stalled = None;
        if let Some((target, asked)) = self.target {
            if self.seen >= target {
                self.proven = Some(self.proven.map_or(asked, |p| p.max(asked)));
            } else {
                stalled = Some(format!(
                    "watch stalled: it has delivered up to revision {} but the bucket was at {} \
                     a check ago",
                    self.seen, target
                ));
            }
        }
        match last {
            Ok(last) if last <= self.seen => {
                self.unreadable = false;
                self.proven = Some(now);
                self.target = None;
            }
            Ok(last) => {
                self.unreadable = false;
                self.target = Some((last, now));
            }
            Err(e) => {
                if !self.unreadable {
                    tracing::warn!(error = %e, seen = self.seen,
                        "cannot read the kill-flag bucket to check the watch; delivering nothing \
                         once the last check is older than the lease");
                }
                self.unreadable = true;
                self.target = None;
            }
        }
        let fresh = stalled.is_none() && self.proven.is_some_and(|p| now - p < self.lease);
        Verdict { fresh, stalled }
    }
}

/// Agents whose flag disappeared while the watch was down are active again.
/// Ends a replay: agents the replay did not mention are active, and the kill state is known
/// unless the replica was listed again after a lapse since the watch started (then it returns
/// false and the watch must replay again).
fn finish_replay(shared: &Shared, seen: &HashSet<AgentId>, relisted: u64) -> bool {
    for id in shared.gates.known() {
        if !seen.contains(&id) {
            shared.gates.get(&id).set(GateState::Active { revision: 0 });
        }
    }
    if !shared.gates.set_known(true, relisted) {
        return false;
    }
    tracing::info!(flags = seen.len(), "kill flags loaded; delivering");
    true
}

/// Why a watch replays when its replica is listed again after its presence lapsed.
const RELISTED: &str = "listed again after its presence lapsed: kills written meanwhile did not \
                        wait for this replica, so its watch replays before it delivers";

/// Applies one change to the gate and starts its fence. Returns the agent it was about.
fn apply(shared: &Arc<Shared>, entry: &Entry) -> Option<AgentId> {
    let id = match AgentId::new(entry.key.clone()) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(key = entry.key, error = %e, "ignoring kill flag with an invalid key");
            return None;
        }
    };
    let revision = entry.revision;
    let state = match entry.operation {
        Operation::Delete | Operation::Purge => GateState::Active { revision },
        Operation::Put => match decode::<KillRecord>(&entry.value) {
            Ok(rec) if rec.state == KillState::Active => GateState::Active { revision },
            Ok(rec) => GateState::Killed {
                revision,
                reason: rec.reason,
            },
            Err(e) => {
                // Fail closed: an unreadable flag is a kill until an operator writes a good one.
                tracing::error!(agent = %id, revision, error = %e,
                    "unreadable kill record; treating the agent as killed until `mesh-cli kill` or `mesh-cli resume` rewrites it");
                GateState::Killed {
                    revision,
                    reason: format!("kill record unreadable ({e}); treated as killed"),
                }
            }
        },
    };
    let gate = shared.gates.get(&id);
    let was_killed = gate.is_killed();
    gate.set(state.clone());
    if was_killed && !state.is_killed() {
        // Resume: health starts afresh and this replica's unused cap claims are dropped
        // (mesh-cli resume resets the counters in KV).
        shared.health.reset(&id);
        let shared = shared.clone();
        let agent = id.clone();
        tokio::spawn(async move { shared.budget.forget(&agent).await });
    }
    tracing::info!(agent = %id, revision, killed = state.is_killed(), "kill flag applied");
    let shared = shared.clone();
    let agent = id.clone();
    tokio::spawn(async move { fence(shared, agent, state).await });
    Some(id)
}

/// Waits until this replica enforces `state`, confirms it, and applies the hold in NATS.
async fn fence(shared: Arc<Shared>, id: AgentId, state: GateState) {
    let started = Instant::now();
    let gate = shared.gates.get(&id);
    let revision = state.revision();
    if state.is_killed() {
        if shared.has_worker(&id) {
            gate.wait_drained(revision).await;
        }
        gate.wait_idle().await;
    }
    let mut ack = FenceAck::new(
        shared.gateway_id.clone(),
        id.clone(),
        revision,
        if state.is_killed() {
            KillState::Killed
        } else {
            KillState::Active
        },
    );
    ack.took_us = started.elapsed().as_micros() as u64;
    crate::metrics::Metrics::observe(&shared.metrics.fence_seconds, started.elapsed());
    match encode(&ack) {
        Ok(bytes) => {
            if let Err(e) = shared
                .client
                .publish(shared.subjects.fenced(&id), bytes.into())
                .await
            {
                tracing::warn!(agent = %id, error = %e, "could not publish fence ack");
            }
        }
        Err(e) => tracing::warn!(agent = %id, error = %e, "could not encode fence ack"),
    }
    // The hold in NATS follows the latest state, whatever order these tasks finish in.
    let _guard = gate.hold_lock().await;
    let held = gate.is_killed();
    if let Err(e) = setup::set_hold(&shared.objects.intents, &shared.cfg, &id, held).await {
        tracing::warn!(agent = %id, held, error = %e, "could not update the consumer hold");
    }
}

/// Resolves when the connection to NATS is lost. async-nats reports no event to a client it
/// did not create, so this looks at the connection state a few times a second.
pub(crate) async fn disconnected(client: &async_nats::Client) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if client.connection_state() != async_nats::connection::State::Connected {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(1);

    #[test]
    fn a_watch_that_keeps_up_stays_fresh() {
        let mut live = Liveness::new(I);
        live.replayed(5);
        let t = Instant::now();
        assert!(live.check(Ok(5), t).fresh);
        // A write lands; the watch delivers it before the next check.
        assert!(live.check(Ok(6), t + I).fresh);
        live.saw(6);
        let v = live.check(Ok(6), t + 2 * I);
        assert_eq!(
            v,
            Verdict {
                fresh: true,
                stalled: None
            }
        );
    }

    #[test]
    fn a_watch_that_misses_a_revision_for_a_check_is_stalled() {
        let mut live = Liveness::new(I);
        live.replayed(5);
        let t = Instant::now();
        assert!(live.check(Ok(7), t).fresh);
        let v = live.check(Ok(7), t + I);
        assert!(!v.fresh);
        assert!(v.stalled.is_some());
    }

    #[test]
    fn an_unreadable_bucket_fails_closed_once_the_lease_runs_out() {
        let mut live = Liveness::new(I);
        live.replayed(5);
        let t = Instant::now();
        assert!(live.check(Err("timeout".into()), t + I).fresh);
        assert!(!live.check(Err("timeout".into()), t + 3 * I).fresh);
        // Readable again and current: fresh again, nothing stalled.
        assert_eq!(
            live.check(Ok(5), t + 4 * I),
            Verdict {
                fresh: true,
                stalled: None
            }
        );
    }
}
