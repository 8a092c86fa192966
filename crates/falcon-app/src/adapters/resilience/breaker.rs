//! A consecutive-failures circuit breaker, driven by `tokio::time` so tests can pause time.
//!
//! - **Closed:** calls go through; `failure_threshold` consecutive failures open it.
//! - **Open:** calls fail fast without touching the network for `open_for`; then the next
//!   call moves it to half-open.
//! - **Half-open:** up to `half_open_successes` probe calls go through at once; that many
//!   successes close it, one failure re-opens it.
//!
//! A background health probe may close it early (`probe_succeeded`): the dependency is
//! back as soon as it answers, not `open_for` later.

use std::sync::Mutex;
use std::time::Duration;

use crate::telemetry::metrics::{BREAKER_FAILURES, BREAKER_STATE, BREAKER_SUCCESSES};
use metrics::{counter, gauge};
use tokio::time::Instant;

/// Breaker state; the number is the `circuit_breaker_state` gauge value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// `false`: always closed, never counts (`CIRCUIT_BREAKER_ENABLED=false`).
    pub enabled: bool,
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub half_open_successes: u32,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    half_open_successes: u32,
    probes_in_flight: u32,
}

/// One breaker per dependency (`redis`, `postgres`).
#[derive(Debug)]
pub struct CircuitBreaker {
    dependency: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(dependency: &'static str, config: BreakerConfig) -> Self {
        gauge!(BREAKER_STATE, "dependency" => dependency).set(0.0);
        counter!(BREAKER_FAILURES, "dependency" => dependency).absolute(0);
        counter!(BREAKER_SUCCESSES, "dependency" => dependency).absolute(0);
        let inner = Inner {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: Instant::now(),
            half_open_successes: 0,
            probes_in_flight: 0,
        };
        Self { dependency, config, inner: Mutex::new(inner) }
    }

    pub fn dependency(&self) -> &'static str {
        self.dependency
    }

    pub fn state(&self) -> BreakerState {
        self.inner.lock().map_or(BreakerState::Open, |i| i.state)
    }

    /// Whether a call may go to the network now. Every `true` must be followed by
    /// `record_success` or `record_failure`.
    pub fn try_acquire(&self) -> bool {
        if !self.config.enabled {
            return true;
        }
        let Ok(mut inner) = self.inner.lock() else { return false };
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                if inner.opened_at.elapsed() >= self.config.open_for {
                    self.transition(&mut inner, BreakerState::HalfOpen);
                    inner.probes_in_flight = 1;
                    true
                } else {
                    false
                }
            }
            BreakerState::HalfOpen => {
                if inner.probes_in_flight < self.config.half_open_successes.max(1) {
                    inner.probes_in_flight += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    pub fn record_success(&self) {
        counter!(BREAKER_SUCCESSES, "dependency" => self.dependency).increment(1);
        if !self.config.enabled {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        match inner.state {
            BreakerState::Closed => inner.consecutive_failures = 0,
            BreakerState::HalfOpen => {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                inner.half_open_successes += 1;
                if inner.half_open_successes >= self.config.half_open_successes.max(1) {
                    self.transition(&mut inner, BreakerState::Closed);
                }
            }
            // A call that started before the breaker opened; it proves little.
            BreakerState::Open => {}
        }
    }

    pub fn record_failure(&self) {
        counter!(BREAKER_FAILURES, "dependency" => self.dependency).increment(1);
        if !self.config.enabled {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        match inner.state {
            BreakerState::Closed => {
                inner.consecutive_failures += 1;
                if inner.consecutive_failures >= self.config.failure_threshold.max(1) {
                    self.transition(&mut inner, BreakerState::Open);
                }
            }
            BreakerState::HalfOpen => self.transition(&mut inner, BreakerState::Open),
            BreakerState::Open => {}
        }
    }

    /// A background health check reached the dependency: close at once.
    pub fn probe_succeeded(&self) {
        let Ok(mut inner) = self.inner.lock() else { return };
        if inner.state != BreakerState::Closed {
            tracing::info!(dependency = self.dependency, "Health probe succeeded; closing the circuit breaker");
            self.transition(&mut inner, BreakerState::Closed);
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        inner.state = to;
        inner.consecutive_failures = 0;
        inner.half_open_successes = 0;
        inner.probes_in_flight = 0;
        if to == BreakerState::Open {
            inner.opened_at = Instant::now();
        }
        gauge!(BREAKER_STATE, "dependency" => self.dependency).set(to as u8 as f64);
        if to == BreakerState::Open {
            tracing::warn!(
                dependency = self.dependency,
                from = from.name(),
                to = to.name(),
                open_seconds = self.config.open_for.as_secs_f64(),
                "Circuit breaker opened"
            );
        } else {
            tracing::info!(
                dependency = self.dependency,
                from = from.name(),
                to = to.name(),
                "Circuit breaker state changed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig {
                enabled: true,
                failure_threshold: 3,
                open_for: Duration::from_secs(60),
                half_open_successes: 2,
            },
        )
    }

    fn fail(b: &CircuitBreaker, n: u32) {
        for _ in 0..n {
            assert!(b.try_acquire());
            b.record_failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_opens_after_threshold_consecutive_failures() {
        let b = breaker();
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_consecutive_count() {
        let b = breaker();
        fail(&b, 2);
        assert!(b.try_acquire());
        b.record_success();
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn open_fails_fast_until_the_timeout() {
        let b = breaker();
        fail(&b, 3);
        assert!(!b.try_acquire());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!b.try_acquire());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn open_becomes_half_open_after_the_timeout_and_limits_probes() {
        let b = breaker();
        fail(&b, 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.try_acquire());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "second probe allowed (half_open_successes = 2)");
        assert!(!b.try_acquire(), "no more than 2 probes in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_closes_after_enough_successes() {
        let b = breaker();
        fail(&b, 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.try_acquire());
        b.record_success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire());
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_reopens_on_a_failure_and_restarts_the_timeout() {
        let b = breaker();
        fail(&b, 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.try_acquire());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!b.try_acquire(), "the open period starts again from the failed probe");
    }

    #[tokio::test(start_paused = true)]
    async fn health_probe_closes_an_open_breaker_at_once() {
        let b = breaker();
        fail(&b, 3);
        b.probe_succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_breaker_never_opens() {
        let b = CircuitBreaker::new(
            "test",
            BreakerConfig {
                enabled: false,
                failure_threshold: 1,
                open_for: Duration::from_secs(60),
                half_open_successes: 1,
            },
        );
        fail(&b, 10);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire());
    }
}
