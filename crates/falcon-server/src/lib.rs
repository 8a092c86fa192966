//! Falcon's inference worker: the HTTP layer (`http`: routes, the wire format, error mapping,
//! the OpenAPI document, the accept loop) over the application crate (`falcon-app`: the
//! pipeline, its adapters, configuration, telemetry), and `startup`, which assembles a worker
//! from its configuration. Models come in through `falcon_backend::Backend`; the `falcon`
//! binary (crate `falcon-cli`) picks one and is a thin shell around this crate.
#![forbid(unsafe_code)]

pub mod http;
pub mod startup;

pub use falcon_app::Config;
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

    /// No metric name is spelled outside `telemetry/metrics.rs`, in either crate of the
    /// worker. (That nothing below HTTP imports it, Cargo holds: `falcon-app` has no HTTP
    /// dependency and cannot name this crate.)
    #[test]
    fn metric_names_live_in_telemetry() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        sources(&root.join("src"), &mut files);
        sources(&root.join("../falcon-app/src"), &mut files);
        assert!(files.len() > 30, "found the sources");
        for (path, text) in &files {
            if !path.ends_with("telemetry/metrics.rs") {
                for mac in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                    assert!(!text.contains(mac), "{path} spells a metric name: use a telemetry::metrics constant");
                }
            }
        }
    }
}
