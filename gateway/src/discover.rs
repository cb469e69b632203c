//! Discovery: which recipients have intents. An ordered, headers-only consumer over the whole
//! intents stream (last message per subject first, then every new one) tells this replica about
//! each recipient once; it then starts that recipient's worker.
//!
//! An intent to an id that can never be valid would otherwise sit in the stream forever: it is
//! rejected (400) here, with a notice and a record, then deleted from the stream.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures::StreamExt;
use mesh_schemas::headers::NATS_MSG_ID;
use mesh_schemas::AgentId;

use crate::reject::Refusal;
use crate::worker::{self, Shared};

/// Runs until the gateway stops.
pub async fn run(shared: Arc<Shared>) {
    let mut known: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow(&shared, &mut known).await {
            Ok(()) => return,
            Err(why) => tracing::warn!(why, "recipient discovery interrupted; restarting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn follow(shared: &Arc<Shared>, known: &mut HashSet<String>) -> Result<(), String> {
    let consumer = shared
        .objects
        .intents
        .create_consumer(OrderedConfig {
            filter_subject: shared.subjects.intent_stream_filter(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create discovery consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot follow intents: {e}"))?;
    loop {
        let msg = tokio::select! {
            m = messages.next() => m,
            _ = shared.cancel.cancelled() => return Ok(()),
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("discovery consumer ended".to_string()),
        };
        let Some(raw) = shared.subjects.raw_recipient(msg.subject.as_str()) else {
            continue;
        };
        if known.contains(raw) {
            continue;
        }
        match AgentId::new(raw) {
            Ok(to) => {
                known.insert(raw.to_string());
                tracing::debug!(%to, "new recipient");
                worker::spawn(shared, to);
            }
            Err(e) => reject_unroutable(shared, &msg, e.to_string()).await,
        }
    }
}

/// Rejects and deletes an intent whose recipient id is invalid. Every replica sees it; the
/// audit id `reject-<seq>` makes the second record a duplicate that JetStream drops.
async fn reject_unroutable(
    shared: &Arc<Shared>,
    msg: &async_nats::jetstream::Message,
    why: String,
) {
    let Ok(info) = msg.info() else { return };
    let seq = info.stream_sequence;
    let subject = msg.subject.as_str();
    let from = subject
        .strip_prefix(shared.subjects.prefix())
        .and_then(|r| r.strip_prefix(".intent."))
        .and_then(|r| r.split('.').next())
        .and_then(|f| AgentId::new(f).ok());
    let msg_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(NATS_MSG_ID))
        .map(|v| v.as_str().to_string());
    let intent_id = msg_id.unwrap_or_else(|| format!("{}-{seq}", shared.cfg.names.intents_stream));
    let refusal = Refusal::Invalid(format!("bad recipient in {subject:?}: {why}"));
    // Record first (its audit id makes a second replica's record a duplicate JetStream drops),
    // delete after: an intent is never gone without its record.
    if let Err(e) = shared
        .rejector
        .record(subject, from.as_ref(), &intent_id, seq, &refusal)
        .await
    {
        tracing::warn!(error = %e, subject, "could not record rejection of an unroutable intent; it stays in the stream");
        return;
    }
    if let Err(e) = shared.objects.intents.delete_message(seq).await {
        tracing::debug!(error = %e, seq, "unroutable intent already deleted");
    }
}
