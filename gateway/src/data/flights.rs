//! Deliveries in flight, each a task of its own.
//!
//! A drain and the shared lane once kept their deliveries as futures they polled themselves,
//! and between polls awaited sends on the same NATS connection (progress acks, consumer info,
//! rejections). async-nats queues every command of a connection in one bounded channel and
//! grants a free slot to the sender that has waited longest. A slot granted to a delivery whose
//! owner was itself waiting for a slot stayed taken, because nobody polled that delivery. With
//! more deliveries waiting than the channel has slots, every slot ended up granted to a future
//! nobody polled, and the connection went silent for good: no delivery, no presence refresh, no
//! kill-flag check (the replay stall of issue 9). As tasks, deliveries are polled by the runtime
//! whatever their owner awaits.

use std::future::Future;

use tokio::task::JoinSet;

/// Deliveries in flight; their results come back in the order they finish.
pub struct Flights<T> {
    set: JoinSet<T>,
}

impl<T: Send + 'static> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            set: JoinSet::new(),
        }
    }
}

impl<T: Send + 'static> Flights<T> {
    /// Starts a delivery.
    pub fn spawn(&mut self, delivery: impl Future<Output = T> + Send + 'static) {
        self.set.spawn(delivery);
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The next delivery to finish; `None` when none is in flight. Cancel safe. A delivery that
    /// panicked panics here too: its owner cannot tell which intent it held, so it must not go
    /// on as if nothing happened (dropping the set cancels the other deliveries, and JetStream
    /// redelivers what nobody acknowledged).
    pub async fn next(&mut self) -> Option<T> {
        loop {
            match self.set.join_next().await? {
                Ok(done) => return Some(done),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: only by dropping the set, which ends its owner too.
                Err(_) => continue,
            }
        }
    }
}
