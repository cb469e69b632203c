//! Finds parked recipients and starts a drain ([`crate::data::drain`]) for each in this replica: at
//! start and every few seconds by listing the `in_<id>` consumers, and at once when the shared
//! lane announces one on `<prefix>.gw.parked.<id>`. Every replica drains every parked recipient
//! (its consumer is pinned, so one replica at a time receives), which is what lets another
//! replica take a drain over when one stops.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mesh_schemas::AgentId;

use crate::data::drain;
use crate::setup;
use crate::shared::Shared;

/// How often the consumer list is read again (announcements are core NATS and may be missed).
const RELIST: Duration = Duration::from_secs(5);

/// Runs until the gateway stops.
pub async fn run(shared: Arc<Shared>) {
    let mut notices = loop {
        match shared
            .client
            .subscribe(shared.subjects.parked_filter())
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow parking notices; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shared.cancel.cancelled() => return,
                }
            }
        }
    };
    let mut relist = tokio::time::interval(RELIST);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = relist.tick() => {
                match setup::parked_recipients(&shared.objects.intents, &shared.cfg.names).await {
                    Ok(parked) => {
                        for to in parked {
                            drain::spawn(&shared, to);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list parked recipients"),
                }
            }
            Some(notice) = notices.next() => {
                let raw = notice.subject.as_str().rsplit('.').next().unwrap_or_default();
                if let Ok(to) = AgentId::new(raw) {
                    drain::spawn(&shared, to);
                }
            }
        }
    }
}
