//! Retrying one NATS operation until a deadline. For some seconds after a node of a cluster is
//! lost, requests to the streams and buckets it led time out or find no leader, and the same
//! request succeeds once a new leader is elected. `kill` and `resume` retry each step they need
//! within their `--timeout` instead of failing at the first timeout, and report the steps that
//! still failed when the time was up. Policy changes (`policy set|rm`, the console's) retry the
//! same way, but only errors that another attempt can cure ([`transient`]): a policy the
//! operator got wrong fails at once.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::CliError;

/// How long one JetStream request of a retried step may take: short, so that a step gets
/// several attempts within a kill's `--timeout` while a cluster elects.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// First wait between two attempts.
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// Longest wait between two attempts.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// A step that did not succeed before its deadline: how often it was tried, and its last error.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub attempts: u32,
    pub last: E,
}

/// Runs `op` until it succeeds or `deadline` has passed; it is tried at least once. `what`
/// names the step in the logs.
pub async fn until<T, E, F, Fut>(deadline: Instant, what: &str, op: F) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    until_while(deadline, what, |_| true, op).await
}

/// Whether a failed step may succeed when it is tried again: a NATS request that timed out,
/// found no leader or was not answered (a cluster electing), a stream or bucket that could not
/// be created or checked for the same reasons. Not: the operator's input (a bad policy, usage,
/// configuration), a stream whose settings conflict with the mesh's, a command interrupted.
pub fn transient(e: &CliError) -> bool {
    match e {
        CliError::Nats { .. } => true,
        CliError::Setup(e) => e.is_retryable(),
        _ => false,
    }
}

/// [`until`], but an error for which `retryable` is false ends it at once (as a [`GaveUp`]
/// after the attempts so far).
pub async fn until_while<T, E, F, Fut>(
    deadline: Instant,
    what: &str,
    retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let mut wait = FIRST_WAIT;
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        match op().await {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(what, attempts, "done after retrying");
                }
                return Ok(value);
            }
            Err(last) => {
                if !retryable(&last) || Instant::now() + wait >= deadline {
                    return Err(GaveUp { attempts, last });
                }
                tracing::info!(what, attempt = attempts, error = %last, retry_in = ?wait, "failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_WAIT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn retries_until_it_succeeds() {
        let calls = Cell::new(0);
        let out = until(Instant::now() + Duration::from_secs(2), "test", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err("not yet")
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(out.ok(), Some(3));
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let start = Instant::now();
        let out: Result<(), _> = until(start + Duration::from_millis(500), "test", || async {
            Err("no leader")
        })
        .await;
        let gave_up = out.expect_err("never succeeds");
        assert_eq!(gave_up.last, "no leader");
        assert!(gave_up.attempts > 2, "tried {} times", gave_up.attempts);
        assert!(start.elapsed() <= Duration::from_millis(500));
    }

    #[tokio::test]
    async fn an_error_that_is_not_retryable_ends_it_at_once() {
        let calls = Cell::new(0);
        let out: Result<(), _> = until_while(
            Instant::now() + Duration::from_secs(5),
            "test",
            |e: &&str| *e == "no leader",
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { Err(if n < 3 { "no leader" } else { "refused" }) }
            },
        )
        .await;
        let gave_up = out.expect_err("never succeeds");
        assert_eq!((gave_up.attempts, gave_up.last), (3, "refused"));
    }

    #[test]
    fn nats_and_setup_failures_are_transient_the_operators_mistakes_are_not() {
        let timed_out = CliError::nats("could not write mesh-policy[a]", "timed out");
        assert!(transient(&timed_out));
        let no_leader = CliError::Setup(mesh_gateway::SetupError::Bucket {
            name: "mesh-policy".into(),
            source: "JetStream system temporarily unavailable".into(),
        });
        assert!(transient(&no_leader));
        let incompatible = CliError::Setup(mesh_gateway::SetupError::Incompatible {
            name: "MESH_INTENTS".into(),
            field: "subjects",
            found: "other.>".into(),
            expected: "mesh.intent.>".into(),
        });
        assert!(!transient(&incompatible));
        assert!(!transient(&CliError::Usage("no policy field given".into())));
        let invalid = mesh_schemas::Policy {
            rate: Some("fast".into()),
            ..mesh_schemas::Policy::default()
        }
        .validate()
        .expect_err("invalid rate");
        assert!(!transient(&CliError::InvalidPolicy {
            key: "a".into(),
            source: invalid,
        }));
        assert!(!transient(&CliError::Interrupted("policy")));
    }

    #[tokio::test]
    async fn tries_once_even_past_the_deadline() {
        let out: Result<u8, GaveUp<&str>> = until(Instant::now(), "test", || async { Ok(7) }).await;
        assert_eq!(out.ok(), Some(7));
    }
}
