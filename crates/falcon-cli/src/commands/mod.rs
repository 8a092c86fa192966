pub mod healthcheck;
pub mod load;
pub mod model;
pub mod predict;
pub mod serve;
pub mod train;

use std::process::ExitCode;

/// Exit status for bad configuration or usage (as clap's own).
pub const EXIT_CONFIG: u8 = 2;

/// Reports a configuration error as a JSON `ERROR` log line (for the runbook's crash-loop
/// diagnosis with jq) and as clap's text on stderr, then exits with status 2.
pub fn config_error(e: &clap::Error) -> ExitCode {
    let worker_id = std::env::var("WORKER_ID").unwrap_or_else(|_| "falcon".into());
    falcon_server::telemetry::logging::init(&worker_id, "INFO");
    let message = e.kind().to_string();
    let detail = e.to_string();
    let detail = detail.lines().next().unwrap_or_default().trim_start_matches("error: ");
    // clap names the setting as `--flag <VARIABLE>`; the environment variable is the part in <>.
    let variable =
        detail.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(v, _)| v).unwrap_or_default();
    tracing::error!(error = detail, kind = message, variable, "Invalid configuration");
    let _ = e.print();
    ExitCode::from(EXIT_CONFIG)
}
