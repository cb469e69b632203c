//! The bounded memory of one inbox: which intents it has acknowledged lately and which are being
//! handled right now.
//!
//! Delivery is at-least-once: when an acknowledgement is lost or late, the gateway delivers the
//! same intent again. The inbox answers a repeat of an acknowledged intent itself (re-ack, not
//! yielded) and ignores a repeat of an intent still being handled (not yielded, not acked: the
//! gateway asks again later, and by then the first copy is acknowledged or released). The memory
//! keeps the last `capacity` acknowledged ids, oldest forgotten first, so it never grows without
//! bound; an intent redelivered after that many newer ones is yielded again.
//!
//! Keys are `(sender, intent id)`: intent ids are chosen by senders, so two senders may pick the
//! same one.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What identifies one intent: its sender and its intent id.
pub(crate) type Key = (String, String);

/// What the inbox knows about an incoming intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not seen lately: yield it (it is now marked in progress).
    New,
    /// Acknowledged lately: acknowledge again, do not yield.
    Acked,
    /// Yielded and not yet acknowledged or dropped: ignore this copy.
    InProgress,
}

/// Recently acknowledged and in-progress intent ids.
#[derive(Debug)]
pub(crate) struct Recent {
    /// How many acknowledged ids to remember.
    capacity: usize,
    /// Acknowledged ids, oldest first, for eviction.
    order: VecDeque<Key>,
    /// Acknowledged ids, for lookup.
    acked: HashSet<Key>,
    /// Ids yielded and not yet acknowledged or dropped.
    in_progress: HashSet<Key>,
}

impl Recent {
    pub(crate) fn new(capacity: usize) -> Self {
        Recent {
            capacity,
            order: VecDeque::with_capacity(capacity.min(4096)),
            acked: HashSet::with_capacity(capacity.min(4096)),
            in_progress: HashSet::new(),
        }
    }

    /// Classifies `key`, marking it in progress when it is new.
    pub(crate) fn claim(&mut self, key: &Key) -> Seen {
        if self.acked.contains(key) {
            Seen::Acked
        } else if !self.in_progress.insert(key.clone()) {
            Seen::InProgress
        } else {
            Seen::New
        }
    }

    /// Records that `key` was acknowledged.
    pub(crate) fn acked(&mut self, key: Key) {
        self.in_progress.remove(&key);
        if self.capacity == 0 || self.acked.contains(&key) {
            return;
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.acked.remove(&old);
            }
        }
        self.acked.insert(key.clone());
        self.order.push_back(key);
    }

    /// Forgets that `key` is in progress (its delivery was dropped without an ack).
    pub(crate) fn release(&mut self, key: &Key) {
        self.in_progress.remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.acked.len()
    }
}

/// A [`Recent`] shared between an inbox and the deliveries it yielded.
pub(crate) type Shared = Arc<Mutex<Recent>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, Recent> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A yielded delivery's hold on its key: acknowledged with [`Claim::acked`], released on drop.
#[derive(Debug)]
pub(crate) struct Claim {
    shared: Shared,
    key: Option<Key>,
}

impl Claim {
    pub(crate) fn new(shared: Shared, key: Key) -> Self {
        Claim {
            shared,
            key: Some(key),
        }
    }

    /// Marks the key acknowledged.
    pub(crate) fn acked(mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.shared).acked(key);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.shared).release(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(from: &str, id: &str) -> Key {
        (from.to_string(), id.to_string())
    }

    #[test]
    fn new_then_in_progress_then_acked() {
        let mut r = Recent::new(4);
        assert_eq!(r.claim(&key("a", "1")), Seen::New);
        assert_eq!(r.claim(&key("a", "1")), Seen::InProgress);
        r.acked(key("a", "1"));
        assert_eq!(r.claim(&key("a", "1")), Seen::Acked);
        // Same id from another sender is another intent.
        assert_eq!(r.claim(&key("b", "1")), Seen::New);
    }

    #[test]
    fn released_keys_are_new_again() {
        let mut r = Recent::new(4);
        assert_eq!(r.claim(&key("a", "1")), Seen::New);
        r.release(&key("a", "1"));
        assert_eq!(r.claim(&key("a", "1")), Seen::New);
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_oldest() {
        let mut r = Recent::new(3);
        for i in 0..5 {
            let k = key("a", &i.to_string());
            assert_eq!(r.claim(&k), Seen::New);
            r.acked(k);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.claim(&key("a", "0")), Seen::New);
        assert_eq!(r.claim(&key("a", "1")), Seen::New);
        assert_eq!(r.claim(&key("a", "4")), Seen::Acked);
    }

    #[test]
    fn zero_capacity_remembers_nothing_acked() {
        let mut r = Recent::new(0);
        assert_eq!(r.claim(&key("a", "1")), Seen::New);
        r.acked(key("a", "1"));
        assert_eq!(r.claim(&key("a", "1")), Seen::New);
    }

    #[test]
    fn claims_release_on_drop_and_record_on_ack() {
        let shared: Shared = Arc::new(Mutex::new(Recent::new(8)));
        assert_eq!(lock(&shared).claim(&key("a", "1")), Seen::New);
        drop(Claim::new(shared.clone(), key("a", "1")));
        assert_eq!(lock(&shared).claim(&key("a", "1")), Seen::New);
        Claim::new(shared.clone(), key("a", "1")).acked();
        assert_eq!(lock(&shared).claim(&key("a", "1")), Seen::Acked);
    }
}
