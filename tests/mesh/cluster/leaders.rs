//! Issue 10: the flood-and-kill scenario of [`mesh_tests::node_loss`] across the loss of the
//! node leading the `mesh-kill` bucket (stream `KV_mesh-kill`) and of the JetStream meta
//! leader. Every promise holds: no stored intent lost, order per sender and recipient, the kill
//! issued during the loss confirmed and enforced, and nothing delivered to or from a killed
//! agent after its kill returned while the gateways read the flags through the leader change.

use mesh_tests::init_tracing;
use mesh_tests::node_loss::{order_asserted_on, run, Figures, Loss};

/// The promises of a run across a leader's loss; the kill issued during the loss (`v1`) must
/// be confirmed (exit 0), not only enforced.
fn assert_promises(loss: Loss, figures: &Figures) {
    tracing::info!(%loss, figures = %figures.summary(), "leader loss run");
    figures.assert_kills_hold();
    let during = &figures.kills[0];
    if during.exit == Some(3) && !order_asserted_on(&figures.server) {
        // nats-server 2.11 (GUARANTEES limit 12): after the kill bucket's leader is lost, a
        // replica's re-created kill watch can stay empty for more than the kill's 15 s (CI on
        // 2.11.11: "delivered up to revision 0 but the bucket was at 2"), so the kill goes
        // unconfirmed by it. Exit 3 says the flag is in force, and that replica delivers
        // nothing meanwhile (fail closed), which `assert_kills_hold` checked above.
        assert!(
            during.output.contains("in force"),
            "exit 3 without the flag in force: {}",
            during.output
        );
        tracing::warn!(server = %figures.server, "kill during the {loss} not confirmed on 2.11 (limit 12)");
    } else {
        assert_eq!(
            during.exit,
            Some(0),
            "the kill during the loss of the {loss} was not confirmed: {}",
            during.output
        );
    }
    if !order_asserted_on(&figures.server) {
        tracing::warn!(inversions = ?figures.inversions, server = %figures.server, "order and loss not asserted on this release (limit 11)");
        return;
    }
    assert!(
        figures.clean(),
        "{loss}: {}; inversions: {:?}",
        figures.summary(),
        figures.inversions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_kill_across_the_loss_of_the_kill_bucket_leader() {
    init_tracing();
    let loss = Loss::StreamLeader("KV_mesh-kill");
    assert_promises(loss, &run(loss).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_kill_across_the_loss_of_the_meta_leader() {
    init_tracing();
    let loss = Loss::MetaLeader;
    assert_promises(loss, &run(loss).await);
}
