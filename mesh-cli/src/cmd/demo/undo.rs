//! Step 2b of the demo: the killed deployer tries to undo its own kill with the credentials it
//! holds, as a rogue agent would: delete its flag in `mesh-kill`, purge the bucket through the
//! JetStream API, send a resume as the gateway. NATS refuses each, and the kill holds.

use std::time::Duration;

use async_nats::{ConnectOptions, Event, HeaderMap};
use mesh_schemas::{decode, AgentId, KillRecord, KillState};
use tokio::sync::mpsc;

use crate::error::CliError;
use crate::mesh::Mesh;

/// How long the server gets to refuse one attempt.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Tries to undo the kill of `agent` with `creds` (its own credentials); returns one line per
/// attempt with the server's answer. Fails if any attempt was not refused or the kill no longer
/// holds.
pub(super) async fn attempt(
    mesh: &Mesh,
    agent: &AgentId,
    creds: &str,
) -> Result<Vec<String>, CliError> {
    let (tx, mut events) = mpsc::unbounded_channel();
    let client = ConnectOptions::with_credentials(creds)
        .map_err(|e| CliError::nats("read the deployer's credentials", e))?
        .custom_inbox_prefix(mesh_auth::permissions::agent_inbox(agent.as_str()))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(super::servers(&mesh.cfg.nats_url)?)
        .await
        .map_err(|e| CliError::nats(format!("connect as {agent}"), e))?;
    let kill_bucket = &mesh.cfg.names.kill_bucket;
    let mut delete = HeaderMap::new();
    delete.insert("KV-Operation", "DEL");
    let attempts = [
        (
            format!("delete its kill flag ($KV.{kill_bucket}.{agent})"),
            format!("$KV.{kill_bucket}.{agent}"),
            Some(delete),
        ),
        (
            "purge the kill bucket".to_string(),
            format!("$JS.API.STREAM.PURGE.KV_{kill_bucket}"),
            None,
        ),
        (
            "confirm a fence as a gateway".to_string(),
            mesh.subjects.fenced(agent),
            None,
        ),
    ];
    let mut lines = Vec::new();
    for (what, subject, headers) in attempts {
        let sent = match headers {
            Some(h) => {
                client
                    .publish_with_headers(subject.clone(), h, "".into())
                    .await
            }
            None => client.publish(subject.clone(), "".into()).await,
        };
        sent.map_err(|e| CliError::nats(format!("publish to {subject}"), e))?;
        let refusal = loop {
            match tokio::time::timeout(REFUSAL_TIMEOUT, events.recv()).await {
                Ok(Some(Event::ServerError(e))) => break e.to_string(),
                Ok(Some(_)) => continue,
                _ => {
                    return Err(CliError::DemoInvariant(format!(
                        "NATS did not refuse the deployer's attempt to {what}"
                    )))
                }
            }
        };
        lines.push(format!("{what}: NATS says {refusal}"));
    }
    let store = mesh
        .bucket(kill_bucket)
        .await?
        .ok_or_else(|| CliError::DemoInvariant("the kill bucket is gone".into()))?;
    let entry = store
        .get(agent.as_str())
        .await
        .map_err(|e| CliError::nats("read the kill flag", e))?
        .ok_or_else(|| CliError::DemoInvariant("the kill flag is gone".into()))?;
    let record: KillRecord = decode(&entry)
        .map_err(|e| CliError::DemoInvariant(format!("the kill flag is unreadable: {e}")))?;
    if record.state != KillState::Killed {
        return Err(CliError::DemoInvariant("the kill no longer holds".into()));
    }
    Ok(lines)
}
