//! Falcon's inference worker: configuration, the HTTP API, the application layer that runs
//! each request (`app`), its adapters (cache, idempotency, request log, resilience) and
//! telemetry. Models come in through `falcon_backend::Backend`; the `falcon` binary
//! (crate `falcon-cli`) picks one and is a thin shell around this crate.
#![forbid(unsafe_code)]

pub mod app;
pub mod ballast;
pub mod cache;
pub mod config;
pub mod error_type;
pub mod http;
pub mod idempotency;
pub mod inference;
pub mod lifecycle;
pub mod request_log;
pub mod resilience;
pub mod shutdown;
pub mod startup;
pub mod tasks;
pub mod telemetry;

pub use config::Config;
pub use startup::{Application, LoadedBackend, Models, Reloader, build_state, build_state_with, shutdown_signal};

#[cfg(test)]
mod layering {
    use std::path::Path;

    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }

    /// The HTTP layer sits on top (only `startup`, which assembles the worker, is above
    /// it): nothing below it may reach up into it, and no metric name is spelled outside
    /// `telemetry/metrics.rs`.
    #[test]
    fn no_module_below_http_imports_http_and_metric_names_live_in_telemetry() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(files.len() > 20, "found the sources");
        for (path, text) in &files {
            let below_http =
                !path.contains("/src/http/") && !path.ends_with("/src/lib.rs") && !path.ends_with("/src/startup.rs");
            if below_http {
                assert!(!text.contains("crate::http"), "{path} imports the HTTP layer");
                assert!(!text.contains("axum::"), "{path} uses axum");
            }
            if !path.ends_with("telemetry/metrics.rs") {
                for mac in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                    assert!(!text.contains(mac), "{path} spells a metric name: use a telemetry::metrics constant");
                }
            }
        }
    }
}
