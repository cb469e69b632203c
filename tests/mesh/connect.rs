//! Issue 13 point 3: `mesh-gateway --nats-url` takes the comma-separated list that the docs
//! promise. The binary used to refuse even the same URL twice ("invalid port number").

use mesh_tests::gateways::{wait_live, GatewayProcess};
use mesh_tests::{connect, init_tracing, NatsServer};

#[tokio::test]
async fn the_gateway_binary_takes_a_url_list() {
    init_tracing();
    let server = NatsServer::start();
    let url = server.url();
    let _g1 = GatewayProcess::start(&format!("{url}, {url}"), "gw1");
    wait_live(&connect(&url).await, &["gw1"]).await;
}
