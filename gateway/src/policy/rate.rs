//! Throttling with `governor`: a sender over its rate waits; nothing is dropped and no
//! JetStream delivery attempt is spent (its queue in the worker simply does not advance).
//!
//! A sender's intents to different recipients can be delivered by different replicas, so each
//! replica enforces `rate / live replicas` and `burst / live replicas` (at least 1): the mesh
//! as a whole stays within the rate plus the burst.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mesh_schemas::{AgentId, Rate};

/// A sender's limiter with what it was built from: rate, burst, live replicas.
type Entry = (Rate, u32, usize, Arc<DefaultDirectRateLimiter>);

/// Per-sender limiters, rebuilt when the policy or the replica count changes.
#[derive(Default)]
pub struct RateLimits {
    limiters: Mutex<HashMap<AgentId, Entry>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimits")
    }
}

impl RateLimits {
    /// The limiter for `from` under `rate`/`burst` shared by `replicas` replicas.
    pub fn limiter(
        &self,
        from: &AgentId,
        rate: Rate,
        burst: Option<u32>,
        replicas: usize,
    ) -> Arc<DefaultDirectRateLimiter> {
        let replicas = replicas.max(1);
        let per_second = (rate.count as f64 / rate.per.as_secs_f64()).ceil() as u32;
        let burst = burst.unwrap_or(per_second.max(1));
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((r, b, n, l)) = map.get(from) {
            if *r == rate && *b == burst && *n == replicas {
                return l.clone();
            }
        }
        // One permit every `per / count * replicas`: this replica's share of the rate.
        let period = rate.per.mul_f64(replicas as f64 / rate.count as f64);
        let share = NonZeroU32::new((burst / replicas as u32).max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(share);
        let limiter = Arc::new(RateLimiter::direct(quota));
        map.insert(from.clone(), (rate, burst, replicas, limiter.clone()));
        limiter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_gets_its_share_of_rate_and_burst() {
        let limits = RateLimits::default();
        let id = AgentId::new("a").expect("id");
        let rate = Rate::parse("10/s").expect("rate");
        let one = limits.limiter(&id, rate, Some(4), 2);
        // Burst 4 over 2 replicas: 2 at once, then the third must wait.
        assert!(one.check().is_ok());
        assert!(one.check().is_ok());
        assert!(one.check().is_err());
        // A change of replica count builds a new limiter.
        let solo = limits.limiter(&id, rate, Some(4), 1);
        assert!(!Arc::ptr_eq(&one, &solo));
        for _ in 0..4 {
            assert!(solo.check().is_ok());
        }
        assert!(solo.check().is_err());
    }
}
