//! Falcon's inference worker: configuration, HTTP API, request pipeline, response cache
//! and telemetry. The `falcon` binary (crate `falcon-cli`) is a thin shell around it.
#![forbid(unsafe_code)]

pub mod api;
pub mod ballast;
pub mod cache;
pub mod classifier;
pub mod config;
pub mod http;
pub mod idempotency;
pub mod inference;
pub mod pipeline;
pub mod request_log;
pub mod resilience;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use config::Config;
pub use startup::{Application, shutdown_signal};
