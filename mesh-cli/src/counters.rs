//! The policy counters of an agent in KV bucket `mesh-counters`, which the gateways keep
//! mesh-wide: intents claimed per UTC hour (`<id>.h.<hour>`) and day (`<id>.d.<day>`), and cost
//! counted from `Mesh-Cost` per day (`<id>.usd.d.<day>`) and in total (`<id>.usd.total`), in
//! micro-USD. Values are ASCII integers. The key layout is the gateway's
//! ([`mesh_gateway::policy::budget::Windows`]).
//!
//! `status` reads the current windows; `resume` resets them all.

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use mesh_gateway::policy::budget::Windows;
use mesh_schemas::AgentId;
use serde::Serialize;

use crate::error::CliError;
use crate::mesh::Mesh;

/// Micro-USD per USD.
pub const MICRO: f64 = 1_000_000.0;

/// An agent's counters in the current windows; `None` where nothing is counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Current {
    /// Intents claimed in this UTC hour (the gateways claim blocks ahead of deliveries, so it
    /// can run ahead of what was delivered by a few).
    pub intents_this_hour: Option<u64>,
    /// Intents claimed today (UTC).
    pub intents_today: Option<u64>,
    /// `Mesh-Cost` counted today, in USD.
    pub cost_counted_today_usd: Option<f64>,
    /// `Mesh-Cost` counted since the counters were last reset, in USD.
    pub cost_counted_total_usd: Option<f64>,
}

/// Reads `id`'s counters for the current windows.
pub async fn current(store: &kv::Store, id: &AgentId) -> Result<Current, CliError> {
    let w = Windows::now(id);
    let usd = |v: Option<u64>| v.map(|m| m as f64 / MICRO);
    Ok(Current {
        intents_this_hour: value(store, &w.hour).await?,
        intents_today: value(store, &w.day).await?,
        cost_counted_today_usd: usd(value(store, &w.cost_day).await?),
        cost_counted_total_usd: usd(value(store, &w.cost_total).await?),
    })
}

/// `id`'s counters for the current windows, from `all` (every key of the bucket and its value,
/// as [`crate::scan::latest`] reads them): no round trip per agent.
pub fn current_in(all: &std::collections::HashMap<String, bytes::Bytes>, id: &AgentId) -> Current {
    let w = Windows::now(id);
    let value = |key: &str| {
        all.get(key)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let usd = |v: Option<u64>| v.map(|m| m as f64 / MICRO);
    Current {
        intents_this_hour: value(&w.hour),
        intents_today: value(&w.day),
        cost_counted_today_usd: usd(value(&w.cost_day)),
        cost_counted_total_usd: usd(value(&w.cost_total)),
    }
}

/// One counter; `None` when it does not exist or does not hold a number (logged).
async fn value(store: &kv::Store, key: &str) -> Result<Option<u64>, CliError> {
    let bytes = store
        .get(key)
        .await
        .map_err(|e| CliError::nats(format!("could not read {}[{key}]", store.name), e))?;
    let Some(bytes) = bytes else { return Ok(None) };
    let text = String::from_utf8_lossy(&bytes);
    match text.trim().parse::<u64>() {
        Ok(v) => Ok(Some(v)),
        Err(_) => {
            tracing::warn!(bucket = %store.name, key, value = %text, "a counter that is not a number");
            Ok(None)
        }
    }
}

/// Deletes every counter of `id` (all windows, past and current) and returns how many keys
/// there were. A bucket that does not exist yet holds none.
///
/// The counters are messages of the bucket's stream (`KV_<bucket>`, subjects
/// `$KV.<bucket>.<id>.>`); one purge with that filter removes them all, so a counter read
/// afterwards does not exist and starts again from zero.
pub async fn reset(mesh: &Mesh, id: &AgentId) -> Result<u64, CliError> {
    let bucket = &mesh.cfg.names.counters_bucket;
    let stream_name = format!("KV_{bucket}");
    let Some(stream) = mesh.stream(&stream_name).await? else {
        return Ok(0);
    };
    let filter = format!("$KV.{bucket}.{id}.>");
    let what = || format!("could not reset the policy counters of {id} in {bucket}");
    let keys: Vec<(String, usize)> = stream
        .info_with_subjects(&filter)
        .await
        .map_err(|e| CliError::nats(what(), e))?
        .try_collect()
        .await
        .map_err(|e| CliError::nats(what(), e))?;
    if keys.is_empty() {
        return Ok(0);
    }
    stream
        .purge()
        .filter(filter.clone())
        .await
        .map_err(|e| CliError::nats(what(), e))?;
    Ok(keys.len() as u64)
}
