use std::collections::BTreeMap;
use std::process::ExitCode;

use falcon_app::models::Repository;
use falcon_server::{Application, Config, LoadedBackend, Models, shutdown_signal};

use crate::backends::{self, LoadError};

/// Runs a worker until SIGTERM/SIGINT. Exit 0 after a clean drain, 1 when start-up fails,
/// 2 for a setting that cannot work (an unknown `MODEL_BACKEND`, a malformed dependency URL).
pub fn run(config: Config) -> ExitCode {
    let worker_id = config.worker_id();
    falcon_app::telemetry::logging::init(&worker_id, &config.server.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = config.validate() {
        tracing::error!(error = %e.message, variable = e.variable, "Invalid configuration");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let code = runtime.block_on(async {
        let s = &config.server;
        let repository =
            match backends::repository(s.model_repository.as_deref(), &s.model_backend, s.model_path.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, variable = "MODEL_REPOSITORY", "Invalid configuration");
                    return ExitCode::from(super::EXIT_CONFIG);
                }
            };
        let loaded = match load_all(&repository).await {
            Ok(loaded) => loaded,
            Err(code) => return code,
        };
        let shadow = match config.server.shadow_model_path.clone() {
            None => None,
            Some(path) => {
                // Scored against the default model's answers, with SHADOW_MODEL_BACKEND, else
                // the default model's backend.
                let name = config.server.shadow_model_backend.clone().unwrap_or_else(|| {
                    repository.models.get(&repository.default).map(|m| m.backend.clone()).unwrap_or_default()
                });
                match tokio::task::spawn_blocking(move || backends::load(&name, Some(&path))).await {
                    Ok(Ok(m)) => Some(m),
                    Ok(Err(e)) => {
                        tracing::error!(error = format!("{e:#}"), variable = "SHADOW_MODEL_PATH", "Startup failed");
                        return ExitCode::FAILURE;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Startup failed");
                        return ExitCode::FAILURE;
                    }
                }
            }
        };
        // SIGHUP, POST /admin/reload and the repository's load read the repository again and
        // load through the same factory.
        let backends = backends::NAMES.iter().map(|b| (*b).to_owned()).collect();
        let models = Models { repository, loaded, loader: Some(backends::loader()), backends, shadow };
        let app = match Application::build(&config, models).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "Startup failed");
                return ExitCode::FAILURE;
            }
        };
        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "Worker failed");
                ExitCode::FAILURE
            }
        }
    });
    // The worker has drained and flushed. A blocking task still running now is a model load
    // stuck on a hung file system (abandoned after MODEL_RELOAD_TIMEOUT_SECONDS): the exit
    // does not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Loads every model of the repository off the runtime. A model that does not load stops the
/// start, with its name: an unknown backend is a configuration error (exit 2), anything else
/// a failed start (exit 1).
async fn load_all(repository: &Repository) -> Result<BTreeMap<String, LoadedBackend>, ExitCode> {
    let mut loaded = BTreeMap::new();
    for (name, spec) in &repository.models {
        let owned = spec.clone();
        match tokio::task::spawn_blocking(move || backends::load_spec(&owned)).await {
            Ok(Ok(m)) => {
                loaded.insert(name.clone(), m);
            }
            Ok(Err(e @ LoadError::UnknownBackend(_))) => {
                tracing::error!(error = %e, model = %name, variable = "MODEL_BACKEND", "Invalid configuration");
                return Err(ExitCode::from(super::EXIT_CONFIG));
            }
            Ok(Err(e)) => {
                let error = format!("model {name:?} of {}: {e:#}", repository.source());
                tracing::error!(error, model = %name, "Startup failed");
                return Err(ExitCode::FAILURE);
            }
            Err(e) => {
                tracing::error!(error = %e, model = %name, "Startup failed");
                return Err(ExitCode::FAILURE);
            }
        }
    }
    Ok(loaded)
}
