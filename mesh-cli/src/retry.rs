//! Retrying one NATS operation until a deadline. For some seconds after a node of a cluster is
//! lost, requests to the streams and buckets it led time out or find no leader, and the same
//! request succeeds once a new leader is elected. `kill` and `resume` retry each step they need
//! within their `--timeout` instead of failing at the first timeout, and report the steps that
//! still failed when the time was up.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

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
pub async fn until<T, E, F, Fut>(deadline: Instant, what: &str, mut op: F) -> Result<T, GaveUp<E>>
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
                if Instant::now() + wait >= deadline {
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
    async fn tries_once_even_past_the_deadline() {
        let out: Result<u8, GaveUp<&str>> = until(Instant::now(), "test", || async { Ok(7) }).await;
        assert_eq!(out.ok(), Some(7));
    }
}
