//! Issue 10, the chaos soak ([`mesh_tests::chaos`]) for a bounded time in the suite:
//! `AGENT_MESH_CHAOS_SECONDS` (default 90) of random gateway and node crashes, kills, resumes and
//! policy changes, with the seed in `AGENT_MESH_CHAOS_SEED` (default from the clock; printed).

use std::time::Duration;

use mesh_tests::chaos::{fresh_seed, run, FAULT_KINDS, ORDER, REJECTED_THEN_DELIVERED};
use mesh_tests::init_tracing;

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
    )
}

/// Every stored intent is delivered, pending or rejected with a record; nothing reaches or leaves
/// an agent between its confirmed kill and its resume; every kill exits 0 or 3; and every kind of
/// fault happened. Order per sender and recipient is reported, not asserted here: 10-minute soaks
/// still find a rare inversion (GUARANTEES limit 11); the cluster tests that target each failure
/// (`rolling`, `pin`, `failover`, `node_loss`, `leaders`) assert it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_keeps_every_promise() {
    init_tracing();
    let seconds = env_number("AGENT_MESH_CHAOS_SECONDS").unwrap_or(90);
    let seed = env_number("AGENT_MESH_CHAOS_SEED").unwrap_or_else(fresh_seed);
    eprintln!("chaos soak: seed {seed} (AGENT_MESH_CHAOS_SEED={seed} repeats its faults)");
    let report = run(Duration::from_secs(seconds), seed).await;
    eprint!("{}", report.summary());
    let inversions: usize = [ORDER, REJECTED_THEN_DELIVERED]
        .iter()
        .map(|kind| report.violations.get(kind).map_or(0, Vec::len))
        .sum();
    if inversions > 0 {
        eprintln!("chaos soak: {inversions} order inversions, not asserted (limit 11)");
    }
    assert_eq!(
        report.violation_count() - inversions,
        0,
        "{}",
        report.summary()
    );
    for kind in FAULT_KINDS {
        assert!(
            report.faults.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} in the run; {}",
            report.summary()
        );
    }
    assert!(report.delivered > 0, "{}", report.summary());
}
