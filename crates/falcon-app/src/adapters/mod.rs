//! What the pipeline runs on, each behind its own types and failing soft: the response
//! cache (memory, Redis), the idempotency store, the request log (journal, writer, Postgres,
//! SQLite), resilience (breaker, retry) and the inference queue in front of the model.

pub mod cache;
pub mod idempotency;
pub mod inference;
pub mod request_log;
pub mod resilience;
