//! Circuit breaker and retries, shared by every dependency adapter.

pub mod breaker;
pub mod retry;

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker};
pub use retry::RetryPolicy;
