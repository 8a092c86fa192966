//! Retries with exponential backoff and jitter, for transient errors only.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use metrics::counter;

use crate::telemetry::metrics::RETRY_ATTEMPTS;
use crate::telemetry::throttle::Throttle;

/// How often a retry may be logged, however many requests retry.
pub const RETRY_WARNING_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `false`: one attempt (`RETRY_ENABLED=false`).
    pub enabled: bool,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Zero jitter makes delays exact (tests).
    pub jitter: bool,
    /// Shared by every user of the policy, so retries are logged at most once per interval.
    pub warnings: Arc<Throttle>,
}

impl RetryPolicy {
    /// Runs `f` until it succeeds, fails with a non-transient error, or attempts run out.
    /// Callers bound the total time with their own deadline.
    pub async fn run<T, E, F, Fut>(
        &self,
        operation: &'static str,
        is_transient: impl Fn(&E) -> bool,
        f: F,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let retries = if self.enabled { self.max_attempts.saturating_sub(1) as usize } else { 0 };
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay.max(self.base_delay))
            .with_max_times(retries);
        if self.jitter {
            backoff = backoff.with_jitter();
        }
        f.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(is_transient)
            .notify(|error, delay| {
                counter!(RETRY_ATTEMPTS, "operation" => operation).increment(1);
                if self.warnings.ready() {
                    tracing::warn!(
                        operation,
                        error = %error,
                        delay_ms = delay.as_secs_f64() * 1000.0,
                        "Retrying {operation} after a transient error"
                    );
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            enabled: true,
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: false,
            warnings: Arc::new(Throttle::new(RETRY_WARNING_INTERVAL)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_backoff_then_succeeds() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let r: Result<u32, &str> = policy()
            .run(
                "test",
                |_| true,
                || async {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    if n < 2 { Err("transient") } else { Ok(n) }
                },
            )
            .await;
        assert_eq!(r, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // 100 ms then 200 ms of backoff (paused time rounds each sleep up to the next ms).
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited <= Duration::from_millis(302), "{waited:?}");
    }

    /// How many attempts `policy` makes at an operation that always fails with `error`.
    async fn attempts_at_failing(policy: RetryPolicy, error: &'static str) -> u32 {
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = policy
            .run(
                "test",
                |e: &&str| *e != "permanent",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(error)
                },
            )
            .await;
        assert_eq!(r, Err(error));
        calls.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        assert_eq!(attempts_at_failing(policy(), "down").await, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        assert_eq!(attempts_at_failing(policy(), "permanent").await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_means_one_attempt() {
        assert_eq!(attempts_at_failing(RetryPolicy { enabled: false, ..policy() }, "down").await, 1);
    }
}
