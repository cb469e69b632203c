//! The kill switch itself, shared by `kill` and `resume`: write the flag, set the hold, fence
//! every live gateway replica, tell the agent, record it in the audit trail. A resume also resets
//! the agent's policy counters first (hourly and daily counts, counted cost), so that an agent
//! killed for crossing a cap does not cross it again the moment it is resumed.
//!
//! The order matters. The fence subscription exists before the flag is written, so that no
//! confirmation can be missed (the server handles one connection's protocol in order, so the
//! `SUB` is registered before the KV put that follows it). The flag comes next, so that the
//! kill is in force as early as NATS takes the write. The live replicas are listed right after
//! it: a replica that is not listed held no lease then, so it delivered nothing (a replica
//! delivers only while its presence is fresh), or started after the listing and reads the flag
//! before it delivers. The flag is the hold: every replica reads it before it delivers anything.
//! Once a gateway has parked the agent's inbound work on a consumer of its own, that consumer
//! is paused as well (by mesh-cli and by every gateway), so the work stays quiet in NATS.
//!
//! Every step is retried until the command's `--timeout` ([`crate::retry`]): for some seconds
//! after a node loss, a cluster answers nothing about the streams and buckets that node led.
//! A flag that could not be written ends the command with nothing changed; a step after it that
//! could not be done is reported in [`Outcome::undone`].

use std::time::Duration;

use async_nats::{jetstream, HeaderMap};
use mesh_gateway::setup;
use mesh_schemas::headers::NATS_MSG_ID;
use mesh_schemas::{AgentId, AuditEvent, AuditKind, ControlNotice, KillRecord, KillState};
use serde::Serialize;
use tokio::time::Instant;

use crate::error::{CliError, Report};
use crate::fence::{self, Fence};
use crate::mesh::Mesh;
use crate::retry;

/// What to write.
#[derive(Clone, Debug)]
pub struct Switch {
    pub agent: AgentId,
    /// `Killed` for kill, `Active` for resume.
    pub state: KillState,
    pub reason: String,
    /// Who: `user@host` unless given.
    pub by: String,
    /// How long to wait for the replicas' confirmations.
    pub timeout: Duration,
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub agent: AgentId,
    pub state: KillState,
    pub reason: String,
    pub by: String,
    /// The kill-flag revision written.
    pub revision: u64,
    /// Whether every live replica confirmed.
    pub confirmed: bool,
    /// Whether the live replicas could be listed (when not, `undone` says so).
    #[serde(skip)]
    pub listed: bool,
    /// The replicas and the time the fence took.
    pub replicas: Fence,
    /// Inbound intents waiting for the agent (pending plus unacknowledged), when readable.
    pub pending: Option<u64>,
    /// Policy counters reset (resume only): keys removed from the counters bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters_reset: Option<u64>,
    /// Steps after the flag that could not be done in time, each in a sentence (listing the
    /// replicas, pausing or resuming the parked consumer, the audit record). The flag is in
    /// force all the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub undone: Vec<String>,
}

impl Switch {
    /// Runs the flow; the caller turns an incomplete outcome into exit code 3
    /// ([`Outcome::verdict`]).
    ///
    /// Every step that needs JetStream is retried until `timeout` has passed since the start
    /// (a cluster that lost a node answers again once it has elected new leaders). The flag
    /// comes first: if it cannot be written in that time, nothing changed and the error says
    /// so. Once it is written, a step that still fails is listed in [`Outcome::undone`]
    /// instead of ending the command.
    pub async fn apply(&self, mesh: &Mesh) -> Result<Outcome, CliError> {
        let deadline = Instant::now() + self.timeout;
        let killed = self.state == KillState::Killed;
        let js = mesh.js_within(retry::ATTEMPT_TIMEOUT);
        let gateway_config = mesh.cfg.gateway_config();
        // Before the flag: once a replica sees the resume it checks the caps again, and must
        // find them reset.
        let counters_reset = if killed {
            None
        } else {
            let reset = retry::until(deadline, "reset the policy counters", || {
                crate::counters::reset(mesh, &self.agent)
            })
            .await
            .map_err(|g| g.last)?;
            Some(reset)
        };
        let fenced_subject = mesh.subjects.fenced(&self.agent);
        let mut acks = mesh
            .client
            .subscribe(fenced_subject.clone())
            .await
            .map_err(|e| CliError::nats(format!("could not subscribe to {fenced_subject}"), e))?;

        let record = if killed {
            KillRecord::killed(&self.reason, &self.by)
        } else {
            KillRecord::active(&self.reason, &self.by)
        };
        let (revision, started) = self
            .write_flag(mesh, &js, &gateway_config, &record, deadline)
            .await?;

        // The flag is in force. The rest is retried until the deadline, side by side.
        let mut undone = Vec::new();
        let listed_and_fenced = async {
            let live = retry::until(deadline, "list the live gateway replicas", || async {
                let store = js
                    .get_key_value(&mesh.cfg.names.gateways_bucket)
                    .await
                    .map_err(|e| {
                        CliError::nats(
                            format!(
                                "could not open KV bucket {}",
                                mesh.cfg.names.gateways_bucket
                            ),
                            e,
                        )
                    })?;
                fence::live_replicas(&store).await
            })
            .await?;
            let wait = fence::wait(&mut acks, &self.agent, revision, live, started, deadline);
            Ok::<_, retry::GaveUp<CliError>>(wait.await)
        };
        let held = async {
            // Creates what does not exist yet (a mesh no gateway has run on), as a gateway does.
            let objects = retry::until(deadline, "open the mesh's streams and buckets", || {
                setup::ensure(&js, &gateway_config)
            })
            .await
            .map_err(|g| (g.attempts, CliError::from(g.last)))?;
            retry::until(deadline, "set the hold", || {
                setup::set_hold(&objects.intents, &gateway_config, &self.agent, killed)
            })
            .await
            .map_err(|g| (g.attempts, CliError::from(g.last)))?;
            Ok::<_, (u32, CliError)>(objects)
        };
        let (fence, objects) = tokio::join!(listed_and_fenced, held);
        if let Err(e) = acks.unsubscribe().await {
            tracing::debug!(error = %e, "could not unsubscribe from fence acks");
        }
        let timeout = humantime::format_duration(self.timeout);
        let listed = fence.is_ok();
        let fence = match fence {
            Ok(fence) => Some(fence),
            Err(g) => {
                undone.push(format!(
                    "could not list the live gateway replicas within {timeout} ({} attempts: \
                     {:#}), so no confirmation was waited for",
                    g.attempts,
                    Report(&g.last)
                ));
                None
            }
        };
        let objects = match objects {
            Ok(objects) => Some(objects),
            Err((attempts, e)) => {
                undone.push(format!(
                    "could not {} the agent's parked consumer, if it has one, within {timeout} \
                     ({attempts} attempts: {:#}); every replica does it too when it applies the \
                     flag",
                    if killed { "pause" } else { "resume" },
                    Report(&e)
                ));
                None
            }
        };

        self.notify(mesh, &record).await;
        let pending = match &objects {
            Some(o) => pending(mesh, &o.intents, &self.agent).await,
            None => None,
        };
        let fence = fence.unwrap_or(Fence {
            live: Vec::new(),
            confirmed: Vec::new(),
            missing: Vec::new(),
            elapsed: started.elapsed(),
        });
        let audited = retry::until(deadline, "record the change in the audit trail", || {
            self.audit(mesh, &js, revision, &fence, pending, counters_reset)
        })
        .await;
        if let Err(g) = audited {
            undone.push(format!(
                "{:#} (within {timeout}, {} attempts); the flag is in force all the same",
                Report(&g.last),
                g.attempts
            ));
        }

        Ok(Outcome {
            agent: self.agent.clone(),
            state: self.state,
            reason: self.reason.clone(),
            by: self.by.clone(),
            revision,
            confirmed: listed && fence.complete(),
            listed,
            replicas: fence,
            pending,
            counters_reset,
            undone,
        })
    }

    /// Writes the flag, retrying until `deadline`; returns its revision and when the write
    /// that stored it started (the fence time counts from there).
    async fn write_flag(
        &self,
        mesh: &Mesh,
        js: &jetstream::Context,
        gateway_config: &mesh_gateway::GatewayConfig,
        record: &KillRecord,
        deadline: Instant,
    ) -> Result<(u64, Instant), CliError> {
        let bytes: bytes::Bytes = mesh_schemas::encode(record)
            .map_err(|e| CliError::nats("could not encode the kill record", e))?
            .into();
        let bucket = &mesh.cfg.names.kill_bucket;
        let mut started = Instant::now();
        let written = retry::until(deadline, "write the kill flag", || {
            started = Instant::now();
            let bytes = bytes.clone();
            async move {
                let store = setup::ensure_kill_bucket(js, gateway_config)
                    .await
                    .map_err(CliError::from)?;
                store.put(self.agent.as_str(), bytes).await.map_err(|e| {
                    CliError::nats(format!("could not write {bucket}[{}]", self.agent), e)
                })
            }
        })
        .await;
        match written {
            Ok(revision) => Ok((revision, started)),
            Err(g) => Err(CliError::NotWritten {
                action: if self.state == KillState::Killed {
                    "kill"
                } else {
                    "resume"
                },
                agent: self.agent.to_string(),
                timeout: self.timeout,
                attempts: g.attempts,
                source: Box::new(g.last),
            }),
        }
    }

    /// The notice for a cooperative agent; best effort (enforcement never depends on it).
    async fn notify(&self, mesh: &Mesh, record: &KillRecord) {
        let notice = ControlNotice::new(self.agent.clone(), record);
        let subject = mesh.subjects.control(&self.agent);
        let sent = match mesh_schemas::encode(&notice) {
            Ok(bytes) => mesh
                .client
                .publish(subject.clone(), bytes.into())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::warn!(subject = %subject, error = %e, "could not send the control notice");
        }
    }

    /// Records the change in the audit trail, deduplicated per flag revision.
    async fn audit(
        &self,
        mesh: &Mesh,
        js: &jetstream::Context,
        revision: u64,
        fence: &Fence,
        pending: Option<u64>,
        counters_reset: Option<u64>,
    ) -> Result<(), CliError> {
        let kind = if self.state == KillState::Killed {
            AuditKind::Kill
        } else {
            AuditKind::Resume
        };
        let mut event = AuditEvent::new(kind, self.agent.as_str(), &self.by, &self.reason);
        event.pending = pending;
        event.replicas = Some(u32::try_from(fence.confirmed.len()).unwrap_or(u32::MAX));
        event.fence_ms = Some(fence::ms(fence.elapsed));
        event.detail = counters_reset.map(|n| format!("counters_reset={n}"));
        let bytes = mesh_schemas::encode(&event)
            .map_err(|e| CliError::nats("could not encode the audit event", e))?;
        let mut headers = HeaderMap::new();
        let msg_id = format!("{}-{}-{revision}", kind.as_str(), self.agent);
        headers.insert(NATS_MSG_ID, msg_id.as_str());
        let subject = mesh.subjects.audit(kind.as_str(), self.agent.as_str());
        let what = || {
            format!(
                "could not record the {} in the audit trail ({subject})",
                kind.as_str()
            )
        };
        js.publish_with_headers(subject.clone(), headers, bytes.into())
            .await
            .map_err(|e| CliError::nats(what(), e))?
            .await
            .map_err(|e| CliError::nats(what(), e))?;
        Ok(())
    }
}

impl Outcome {
    /// One sentence for people, e.g. "killed deployer: 2/2 replicas confirmed in 3.1 ms; 12
    /// inbound intents held".
    pub fn summary(&self) -> String {
        let killed = self.state == KillState::Killed;
        let verb = if killed { "killed" } else { "resumed" };
        let f = &self.replicas;
        let replicas = if !self.listed {
            format!(
                "live replicas unknown ({} confirmed); the flag{} in NATS",
                f.confirmed.len(),
                if killed {
                    " and the hold are"
                } else {
                    " is cleared"
                }
            )
        } else if f.live.is_empty() && killed {
            "0 gateway replicas live; the flag and the hold are in NATS and every replica \
             enforces them when it starts"
                .to_string()
        } else if f.live.is_empty() {
            "0 gateway replicas live; the flag is cleared and the hold released in NATS, and \
             every replica delivers when it starts"
                .to_string()
        } else if f.complete() {
            format!(
                "{}/{} replicas confirmed in {} ms",
                f.live.len(),
                f.live.len(),
                fence::ms(f.elapsed)
            )
        } else {
            format!(
                "{}/{} replicas confirmed (not confirmed: {}); the flag{} in NATS",
                f.live.len() - f.missing.len(),
                f.live.len(),
                f.missing.join(", "),
                if killed {
                    " and the hold are"
                } else {
                    " is cleared"
                }
            )
        };
        let pending = match (self.pending, killed) {
            (None, _) => "pending intents unknown".to_string(),
            (Some(n), true) => format!("{n} inbound {} held", plural(n, "intent")),
            (Some(0), false) => "no intents were waiting".to_string(),
            (Some(n), false) => {
                format!("{n} waiting {} now delivered in order", plural(n, "intent"))
            }
        };
        let counters = match self.counters_reset {
            Some(n) if n > 0 => format!("; {n} policy {} reset", plural(n, "counter")),
            _ => String::new(),
        };
        let undone = if self.undone.is_empty() {
            String::new()
        } else {
            format!("; NOT DONE: {}", self.undone.join("; "))
        };
        format!(
            "{verb} {}: {replicas}; {pending}{counters}{undone}",
            self.agent
        )
    }

    /// The exit: `Ok` when every live replica confirmed and every step was done; otherwise
    /// an error with exit code 3 that says what is missing (the flag is in force all the same).
    pub fn verdict(&self, action: &'static str, timeout: Duration) -> Result<(), CliError> {
        if !self.undone.is_empty() {
            let mut undone = self.undone.clone();
            if !self.replicas.missing.is_empty() {
                undone.push(format!(
                    "{} of {} live gateway replicas did not confirm within {}: {}",
                    self.replicas.missing.len(),
                    self.replicas.live.len(),
                    humantime::format_duration(timeout),
                    self.replicas.missing.join(", ")
                ));
            }
            return Err(CliError::Incomplete {
                action,
                agent: self.agent.to_string(),
                undone,
            });
        }
        if self.confirmed {
            return Ok(());
        }
        Err(CliError::Unconfirmed {
            action,
            agent: self.agent.to_string(),
            live: self.replicas.live.len(),
            missing: self.replicas.missing.clone(),
            timeout,
        })
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// Intents waiting for `agent`: held by its parked consumer, or not yet delivered by the shared
/// lane (see `mesh_gateway::setup::pending_for`).
pub async fn pending(
    mesh: &Mesh,
    intents: &async_nats::jetstream::stream::Stream,
    agent: &AgentId,
) -> Option<u64> {
    match setup::pending_for(intents, &mesh.cfg.gateway_config(), agent).await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(%agent, error = %e, "could not count the pending intents");
            None
        }
    }
}
