//! [`Region`]: a second region of a secured mesh, a leaf node of the hub (region A) that the
//! test can cut off and link again.
//!
//! The leaf trusts the hub's operator and accounts (the same `nats-auth.conf`, a full resolver
//! of its own), so region B's agents and operators authenticate at the leaf with the very
//! credentials they would use at the hub. It links the mesh account only, as the `mesh-leaf`
//! user of `leaf.creds`, and runs no JetStream: the streams, buckets and gateways live in the
//! hub, and region B's intents reach them across the link.

use mesh_testkit::{LeafNode, Remote};
use tempfile::TempDir;

use crate::gateways::{cli_binary, wait_live, GatewayTask};
use crate::Mesh;

/// A secured hub ([`Mesh::start_hub`]) with one in-process gateway replica `gw1`, region B
/// linked to it, and an operator client at the hub. Needs a multi-threaded runtime.
pub async fn two_regions() -> (Mesh, Region, GatewayTask, async_nats::Client) {
    crate::init_tracing();
    let (mesh, region) = tokio::task::block_in_place(|| {
        // Built here, if `cargo test` has not, rather than inside a test's timed wait.
        cli_binary();
        let mesh = Mesh::start_hub();
        let region = Region::start(&mesh);
        (mesh, region)
    });
    let gw = GatewayTask::start_in(&mesh, "gw1", |_| {}).await;
    let op = mesh.operator().await;
    wait_live(&op, &["gw1"]).await;
    (mesh, region, gw, op)
}

/// Region B: its server, linked to the hub of `Mesh::start_hub`.
pub struct Region {
    /// The leaf server and its link (cut, restore).
    pub leaf: LeafNode,
    /// The leaf's resolver store; deleted after the server.
    _dir: TempDir,
}

impl Region {
    /// Starts region B's server as a leaf of `hub` and waits until it is linked. Blocks the
    /// thread (call it inside `block_in_place` from a multi-threaded runtime).
    pub fn start(hub: &Mesh) -> Region {
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = hub.auth();
        let conf = auth
            .region_server_config(&dir.path().join("jwt"))
            .expect("region server config");
        let remote = Remote {
            account: Some(auth.info().mesh_account.clone()),
            credentials: Some(auth.leaf_creds().expect("leaf credentials")),
        };
        Region {
            leaf: LeafNode::start(&hub.server, &conf, &[remote]),
            _dir: dir,
        }
    }

    /// Where region B's clients connect.
    pub fn url(&self) -> String {
        self.leaf.url()
    }
}
