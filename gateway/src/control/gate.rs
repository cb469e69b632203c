//! The in-memory view of kill flags that every delivery consults, and the accounting that lets a
//! kill wait for in-flight deliveries.
//!
//! A [`Gate`] per agent holds its kill state (fed only by the KV watch) and a count of deliveries
//! in flight to or from it. A delivery increments the count *before* it reads the state, and a
//! kill writes the state *before* it reads the count; so once a kill sees the count reach zero,
//! no delivery that missed the kill can still be running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use mesh_schemas::AgentId;
use tokio::sync::{watch, Notify};

/// Whether an agent may act, as this replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateState {
    /// No key, or a record with state `active`.
    Active { revision: u64 },
    /// Killed; `reason` is echoed in every rejection.
    Killed { revision: u64, reason: String },
}

impl GateState {
    pub fn revision(&self) -> u64 {
        match self {
            GateState::Active { revision } | GateState::Killed { revision, .. } => *revision,
        }
    }

    pub fn is_killed(&self) -> bool {
        matches!(self, GateState::Killed { .. })
    }
}

/// One agent's gate.
#[derive(Debug)]
pub struct Gate {
    state: watch::Sender<GateState>,
    inflight: AtomicUsize,
    idle: Notify,
    /// The highest kill revision for which this replica's recipient worker (if any) has handed
    /// back its buffered work. Fences wait on it.
    drained: watch::Sender<u64>,
    /// Serialises pausing and resuming the agent's consumer, so the last change wins.
    hold: tokio::sync::Mutex<()>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            state: watch::channel(GateState::Active { revision: 0 }).0,
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            drained: watch::channel(0).0,
            hold: tokio::sync::Mutex::new(()),
        }
    }

    /// The current state.
    pub fn state(&self) -> GateState {
        self.state.borrow().clone()
    }

    /// Whether the agent is killed right now.
    pub fn is_killed(&self) -> bool {
        self.state.borrow().is_killed()
    }

    /// Follows state changes.
    pub fn subscribe(&self) -> watch::Receiver<GateState> {
        self.state.subscribe()
    }

    /// Sets the state; returns whether it changed.
    pub fn set(&self, state: GateState) -> bool {
        self.state.send_if_modified(|s| {
            if *s == state {
                false
            } else {
                *s = state;
                true
            }
        })
    }

    /// Counts a delivery in flight; call before reading the state.
    pub fn enter(&self) {
        self.inflight.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends a delivery started with [`Gate::enter`].
    pub fn leave(&self) {
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no delivery to or from this agent is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Held while pausing or resuming the agent's consumer.
    pub async fn hold_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.hold.lock().await
    }

    /// Records that buffered inbound work was handed back for `revision`.
    pub fn mark_drained(&self, revision: u64) {
        self.drained.send_if_modified(|d| {
            if *d < revision {
                *d = revision;
                true
            } else {
                false
            }
        });
    }

    /// Waits until buffered inbound work was handed back for `revision` or later.
    pub async fn wait_drained(&self, revision: u64) {
        let mut rx = self.drained.subscribe();
        // An error means the gate is gone, and with it any worker that could hold work.
        let _ = rx.wait_for(|d| *d >= revision).await;
    }
}

/// A delivery's hold on the gates of both ends; leaves them on drop.
pub struct InFlight {
    from: Arc<Gate>,
    to: Arc<Gate>,
}

impl InFlight {
    /// Enters both gates. Read the states only after this.
    pub fn enter(from: Arc<Gate>, to: Arc<Gate>) -> Self {
        from.enter();
        to.enter();
        InFlight { from, to }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.from.leave();
        self.to.leave();
    }
}

/// Every agent's gate, plus whether the kill state is known at all.
#[derive(Debug)]
pub struct Gates {
    map: RwLock<HashMap<AgentId, Arc<Gate>>>,
    /// True only while the kill state is known and this replica is listed: otherwise nothing is
    /// delivered (fail closed).
    ready: watch::Sender<bool>,
    parts: std::sync::Mutex<Parts>,
}

/// What readiness is made of.
#[derive(Debug, Default)]
struct Parts {
    /// The KV watch has replayed every kill flag and is current.
    known: bool,
    /// This replica's presence record is fresh, so every kill waits for it.
    listed: bool,
    /// Whether it was ever listed.
    was_listed: bool,
    /// Times it was listed again after its presence had lapsed. Kills written while it was not
    /// listed did not wait for it, and its watch may have been quiet meanwhile: each time, the
    /// kill state counts as unknown until the watch has replayed again.
    relisted: u64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            map: RwLock::new(HashMap::new()),
            ready: watch::channel(false).0,
            parts: std::sync::Mutex::new(Parts::default()),
        }
    }
}

impl Gates {
    /// The gate of `id`, created active on first use.
    pub fn get(&self, id: &AgentId) -> Arc<Gate> {
        if let Some(g) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(id) {
            return g.clone();
        }
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_insert_with(|| Arc::new(Gate::new()))
            .clone()
    }

    /// Agents with a gate, for resetting those a fresh watch did not mention.
    pub fn known(&self) -> Vec<AgentId> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Whether this replica may deliver: kill state known and presence fresh.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Marks the kill state unknown.
    pub fn set_unknown(&self) {
        self.update(|parts| parts.known = false);
    }

    /// Marks the kill state known or unknown, as proven by a watch that started when the
    /// replica had been listed again `relisted` times ([`Gates::relisted`]). If it has been
    /// listed again since, the watch proves nothing about the kills written while it was not
    /// listed: the state stays unknown and this returns false (the watch must replay).
    pub fn set_known(&self, known: bool, relisted: u64) -> bool {
        let mut current = true;
        self.update(|parts| {
            current = parts.relisted == relisted;
            parts.known = known && current;
        });
        current
    }

    /// Times this replica was listed again after its presence lapsed (see [`Gates::set_known`]).
    pub fn relisted(&self) -> u64 {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .relisted
    }

    /// Marks this replica listed (its presence is fresh) or not: a replica that cannot prove it
    /// is listed may be skipped by a kill, so it must not deliver. Listed again after a lapse,
    /// it delivers only once its kill watch has replayed.
    pub fn set_listed(&self, listed: bool) {
        self.update(|parts| {
            if listed && !parts.listed && parts.was_listed {
                parts.known = false;
                parts.relisted += 1;
            }
            parts.listed = listed;
            parts.was_listed |= listed;
        });
    }

    /// Whether this replica's presence is fresh.
    pub fn is_listed(&self) -> bool {
        self.parts.lock().unwrap_or_else(|e| e.into_inner()).listed
    }

    fn update(&self, change: impl FnOnce(&mut Parts)) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut parts);
        let ready = parts.known && parts.listed;
        self.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    /// Follows readiness.
    pub fn ready_rx(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).expect("valid id")
    }

    #[tokio::test]
    async fn wait_idle_returns_only_after_the_last_delivery_leaves() {
        let gates = Gates::default();
        let (a, b) = (gates.get(&id("a")), gates.get(&id("b")));
        let flight = InFlight::enter(a.clone(), b.clone());
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.wait_idle().await }
        });
        // The waiter must still be blocked while the delivery is in flight.
        assert!(tokio::time::timeout(Duration::from_millis(50), async {
            while !waiter.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_err());
        drop(flight);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("wait_idle returns after leave")
            .expect("task ok");
    }

    #[test]
    fn ready_needs_kill_state_and_a_fresh_presence() {
        let gates = Gates::default();
        assert!(gates.set_known(true, gates.relisted()));
        assert!(!gates.is_ready(), "not listed yet");
        gates.set_listed(true);
        assert!(gates.is_ready(), "the first listing needs no new replay");
        gates.set_unknown();
        assert!(!gates.is_ready(), "kill state unknown");
        assert!(gates.set_known(true, gates.relisted()));
        assert!(gates.is_ready());
    }

    #[test]
    fn listed_again_after_a_lapse_needs_a_new_replay() {
        let gates = Gates::default();
        gates.set_listed(true);
        let watch_started = gates.relisted();
        assert!(gates.set_known(true, watch_started));
        gates.set_listed(false);
        assert!(!gates.is_ready(), "presence lapsed");
        gates.set_listed(true);
        assert!(
            !gates.is_ready(),
            "kills written while it was not listed did not wait for it"
        );
        assert!(
            !gates.set_known(true, watch_started),
            "a watch that started before the lapse proves nothing"
        );
        assert!(!gates.is_ready());
        assert!(gates.set_known(true, gates.relisted()), "a new replay does");
        assert!(gates.is_ready());
    }

    #[test]
    fn set_reports_changes_only() {
        let gate = Gates::default().get(&id("a"));
        let killed = GateState::Killed {
            revision: 3,
            reason: "r".into(),
        };
        assert!(gate.set(killed.clone()));
        assert!(!gate.set(killed));
        assert!(gate.is_killed());
        assert!(gate.set(GateState::Active { revision: 4 }));
        assert!(!gate.is_killed());
    }

    #[tokio::test]
    async fn drained_waits_for_the_revision() {
        let gate = Gates::default().get(&id("a"));
        gate.mark_drained(5);
        tokio::time::timeout(Duration::from_millis(100), gate.wait_drained(5))
            .await
            .expect("already drained");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), gate.wait_drained(6))
                .await
                .is_err()
        );
    }
}
