//! Issue 10: a rolling restart of all three nodes under traffic (see [`Loss::Rolling`]): each
//! node stopped and restarted in turn, rejoined with every stream current before the next, the
//! flood running, and `v1` killed while the first node is down and resumed while the last one
//! is. Nothing lost, order kept, nothing delivered to or from `v1` between its kill's return
//! and its resume, and the work held for it delivered after the resume, all of it, in order.

use mesh_tests::init_tracing;
use mesh_tests::node_loss::{order_asserted_on, run, Loss};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_traffic_keeps_every_promise() {
    init_tracing();
    let figures = run(Loss::Rolling).await;
    tracing::info!(figures = %figures.summary(), "rolling restart run");
    figures.assert_kills_hold();
    let kill = &figures.kills[0];
    assert_eq!(
        kill.exit,
        Some(0),
        "kill during the restart: {}",
        kill.output
    );
    let replayed = figures.replayed.as_ref().expect("a rolling run replays v1");
    assert_eq!(
        (replayed.delivered, replayed.out_of_order),
        (replayed.sent, 0),
        "v1's held work after its resume: {}",
        figures.summary()
    );
    if !order_asserted_on(&figures.server) {
        tracing::warn!(inversions = ?figures.inversions, server = %figures.server, "order and loss not asserted on this release (limit 11)");
        return;
    }
    assert!(
        figures.clean(),
        "{}; inversions: {:?}",
        figures.summary(),
        figures.inversions
    );
}
