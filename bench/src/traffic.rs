//! The traffic both sides carry: who sends to whom, on which subject, with which payload.
//!
//! Intents go from one of `senders` sender ids (`s0`, `s1`, …) to one of the agents (`a0`, `a1`,
//! …), drawn at random per intent, with the action `bench`. The gateway route publishes on
//! `mesh.intent.<from>.<to>.bench`; the baseline route on `bench.direct.<from>.<to>.bench`, a
//! stream of its own with the same storage. Both deliver to the same `mesh.agent.<to>.inbox`.
//!
//! Every payload starts with the publish time (microseconds since the process's epoch, little
//! endian), so that an agent in the same process can time the trip.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// Action token of every benchmark intent.
pub const ACTION: &str = "bench";

/// The baseline's stream, and the subjects it captures.
pub const DIRECT_STREAM: &str = "BENCH_DIRECT";
/// Prefix of the baseline route's subjects.
pub const DIRECT_PREFIX: &str = "bench.direct";
/// The baseline relay's durable consumer.
pub const DIRECT_CONSUMER: &str = "relay";

/// Which path an intent takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Through the mesh: `mesh.intent.…`, the gateway delivers.
    Mesh,
    /// The baseline: `bench.direct.…`, the relay delivers.
    Direct,
}

impl Route {
    /// The subject of an intent from sender `from` to agent `to`.
    pub fn subject(self, from: usize, to: usize) -> String {
        match self {
            Route::Mesh => format!("mesh.intent.s{from}.a{to}.{ACTION}"),
            Route::Direct => format!("{DIRECT_PREFIX}.s{from}.a{to}.{ACTION}"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Route::Mesh => "mesh",
            Route::Direct => "baseline",
        }
    }
}

/// Agent `i`'s id.
pub fn agent(i: usize) -> String {
    format!("a{i}")
}

/// Sender `i`'s id.
pub fn sender(i: usize) -> String {
    format!("s{i}")
}

/// `mesh.agent.<id>.inbox`.
pub fn inbox(agent_id: &str) -> String {
    format!("mesh.agent.{agent_id}.inbox")
}

/// The recipient token of a baseline subject (`bench.direct.<from>.<to>.<action>`).
pub fn direct_recipient(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(DIRECT_PREFIX)?
        .strip_prefix('.')?
        .split('.')
        .nth(1)
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since the process's epoch.
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// A payload of `len` bytes (at least 8) stamped with the current time.
pub fn payload(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(8));
    b.put_u64_le(now_us());
    b.resize(len.max(8), b'x');
    b.freeze()
}

/// The publish time stamped into `payload`, if it has one.
pub fn stamp(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A small deterministic generator of (sender, agent) pairs: xorshift64*, seeded per run.
pub struct Pairs {
    state: u64,
    senders: usize,
    agents: usize,
}

impl Pairs {
    pub fn new(seed: u64, senders: usize, agents: usize) -> Pairs {
        Pairs {
            state: seed | 1,
            senders: senders.max(1),
            agents: agents.max(1),
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next (sender, agent) pair.
    pub fn next_pair(&mut self) -> (usize, usize) {
        let r = self.next_u64();
        let from = (r >> 32) as usize % self.senders;
        let to = (r & 0xffff_ffff) as usize % self.agents;
        (from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_stamp_and_size() {
        let p = payload(256);
        assert_eq!(p.len(), 256);
        let s = stamp(&p).expect("stamped");
        assert!(s <= now_us());
        assert_eq!(stamp(b"short"), None);
    }

    #[test]
    fn direct_subjects_name_their_recipient() {
        let s = Route::Direct.subject(3, 42);
        assert_eq!(s, "bench.direct.s3.a42.bench");
        assert_eq!(direct_recipient(&s), Some("a42"));
        assert_eq!(direct_recipient("mesh.intent.s1.a2.bench"), None);
    }

    #[test]
    fn pairs_cover_every_agent() {
        let mut pairs = Pairs::new(7, 100, 10);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let (from, to) = pairs.next_pair();
            assert!(from < 100);
            seen[to] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
