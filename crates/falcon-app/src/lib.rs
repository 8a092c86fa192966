//! Falcon's application layer: the whole story of one inference request (`pipeline`) and
//! the adapters it runs on (`adapters`: the response cache, the idempotency store, the
//! request log, resilience, the inference queue), with the configuration, the lifecycle of
//! the served model, telemetry and the background tasks.
//!
//! It knows no HTTP. Its manifest has no axum, hyper or utoipa, so no module here can reach
//! the transport: `falcon-server` (the HTTP layer and the assembly of a worker) sits on top.
//! Models come in through `falcon_backend::Backend`.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod ballast;
pub mod config;
pub mod deadline;
pub mod error_type;
pub mod lifecycle;
pub mod models;
pub mod pipeline;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
pub mod text_key;

pub use config::Config;

#[cfg(test)]
mod layering {
    /// The layer rule, as Cargo holds it: the application crate depends on no HTTP crate.
    #[test]
    fn the_application_crate_depends_on_no_http_crate() {
        let manifest = include_str!("../Cargo.toml");
        let deps = manifest.split("[dependencies]").nth(1).unwrap_or_default();
        let deps = deps.split("\n[").next().unwrap_or_default();
        for http in ["axum", "hyper", "http-body", "tower", "utoipa"] {
            assert!(
                !deps.lines().any(|l| l.trim_start().starts_with(http)),
                "falcon-app depends on {http}: HTTP belongs to falcon-server"
            );
        }
    }
}
