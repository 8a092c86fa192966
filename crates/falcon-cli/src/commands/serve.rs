use std::process::ExitCode;

use std::sync::Arc;

use falcon_server::{Application, Config, Models, Reloader, shutdown_signal};

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
        let (name, path) = (config.server.model_backend.clone(), config.server.model_path.clone());
        let model = match tokio::task::spawn_blocking(move || backends::load(&name, path.as_deref())).await {
            Ok(Ok(m)) => m,
            Ok(Err(e @ LoadError::UnknownBackend(_))) => {
                tracing::error!(error = %e, variable = "MODEL_BACKEND", "Invalid configuration");
                return ExitCode::from(super::EXIT_CONFIG);
            }
            Ok(Err(e)) => {
                tracing::error!(error = format!("{e:#}"), "Startup failed");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                tracing::error!(error = %e, "Startup failed");
                return ExitCode::FAILURE;
            }
        };
        // SIGHUP and POST /admin/reload load MODEL_PATH again through the same factory.
        let (name, path) = (config.server.model_backend.clone(), config.server.model_path.clone());
        let reloader: Reloader = Arc::new(move || backends::load(&name, path.as_deref()).map_err(|e| format!("{e:#}")));
        let shadow = match config.server.shadow_model_path.clone() {
            None => None,
            Some(path) => {
                let name = config.server.model_backend.clone();
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
        let models = Models { serving: model, reloader: Some(reloader), shadow };
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
