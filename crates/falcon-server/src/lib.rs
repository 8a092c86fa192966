//! Falcon's inference worker: configuration, the HTTP API, the application layer that runs
//! each request (`app`), its adapters (cache, idempotency, request log, resilience) and
//! telemetry. Models come in through `falcon_backend::Backend`; the `falcon` binary
//! (crate `falcon-cli`) picks one and is a thin shell around this crate.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod ballast;
pub mod cache;
pub mod config;
pub mod http;
pub mod idempotency;
pub mod inference;
pub mod request_log;
pub mod resilience;
pub mod startup;
pub mod tasks;
pub mod telemetry;

pub use config::Config;
pub use startup::{Application, LoadedBackend, build_state, shutdown_signal};
