//! Two agents on a running mesh: `bob` serves its inbox, `alice` sends it an intent, bob
//! acknowledges it. Also listens for alice's rejections, so that it shows what a killed sender
//! sees.
//!
//! ```text
//! mesh-cli up                                   # in one terminal
//! MESH_NATS_URL=nats://127.0.0.1:<port> cargo run -p mesh-agent --example ping
//! ```

use std::time::Duration;

use futures::StreamExt;
use mesh_agent::{Agent, AgentId};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("MESH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(url).await?;
    let alice = Agent::new(client.clone(), AgentId::new("alice")?);
    let bob = Agent::new(client, AgentId::new("bob")?);

    let mut inbox = bob.serve().await?;
    let mut rejections = alice.rejections().await?;
    let receipt = alice.send(bob.id(), "ping", "hello").await?;
    println!(
        "alice sent {} (stream seq {})",
        receipt.intent_id, receipt.stream_seq
    );

    tokio::select! {
        Some(delivery) = inbox.next() => {
            println!(
                "bob got {} from {} (attempt {}): {:?}",
                delivery.action, delivery.from, delivery.attempt, delivery.payload
            );
            delivery.ack().await?;
        }
        Some(rejection) = rejections.next() => {
            println!("alice's intent {} was rejected: {} {}", rejection.intent_id, rejection.status, rejection.reason);
        }
        _ = tokio::time::sleep(Duration::from_secs(10)) => println!("nothing within 10s"),
    }
    Ok(())
}
