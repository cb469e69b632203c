//! Automatic kills: a policy breach (or an unreachable agent with `on_unreachable = kill`) writes
//! the same kill record an operator would, signed `policy:<rule>`, so that every replica enforces
//! it through the ordinary watch and fence. Also records the `autokill` event and publishes an
//! alert on `<prefix>.event.autokill.<id>`.

use mesh_schemas::{encode, AgentId, AuditEvent, AuditKind, ControlNotice, KillRecord};

use crate::shared::Shared;

/// Kills `agent` for breaking `rule`; `detail` says how. Does nothing if it is already killed.
pub async fn kill(shared: &Shared, agent: &AgentId, rule: &str, detail: &str) {
    if shared.gates.get(agent).is_killed() {
        return;
    }
    let record = KillRecord::killed(format!("policy {rule}: {detail}"), format!("policy:{rule}"));
    let bytes = match encode(&record) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode kill record");
            return;
        }
    };
    let revision = match shared.objects.kill.put(agent.as_str(), bytes.into()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%agent, rule, error = %e, "automatic kill could not be written");
            return;
        }
    };
    tracing::warn!(%agent, rule, detail, revision, "agent killed automatically by policy");
    let mut event = AuditEvent::new(
        AuditKind::Autokill,
        agent.as_str(),
        format!("policy:{rule}"),
        record.reason.clone(),
    );
    event.detail = Some(format!("rule={rule} gateway={}", shared.gateway_id));
    if let Err(e) = shared
        .rejector
        .audit(&event, &format!("autokill-{agent}-{revision}"))
        .await
    {
        tracing::warn!(error = %e, "could not record the automatic kill");
    }
    let alert = shared
        .cfg
        .names
        .event_subject(AuditKind::Autokill.as_str(), agent.as_str());
    if let Ok(bytes) = encode(&event) {
        let _ = shared.client.publish(alert, bytes.into()).await;
    }
    if let Ok(bytes) = encode(&ControlNotice::new(agent.clone(), &record)) {
        let _ = shared
            .client
            .publish(shared.subjects.control(agent), bytes.into())
            .await;
    }
}
