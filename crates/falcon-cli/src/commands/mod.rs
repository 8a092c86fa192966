pub mod doctor;
pub mod healthcheck;
pub mod load;
pub mod log;
pub mod model;
pub mod openapi;
pub mod predict;
pub mod serve;
pub mod train;

use std::process::ExitCode;

/// Exit status for bad configuration or usage (as clap's own).
pub const EXIT_CONFIG: u8 = 2;

/// Reports a bad command line and exits with status 2. A bad `falcon serve` setting (one
/// that names a variable: `PORT=eighty`, `--cache-ttl-seconds -5`) is also a JSON `ERROR`
/// log line on stdout, for the runbook's crash-loop diagnosis with jq; clap's text goes to
/// stderr. A usage mistake (an unknown flag or subcommand) is clap's text alone.
pub fn config_error(e: &clap::Error) -> ExitCode {
    let detail = e.to_string();
    let detail = detail.lines().next().unwrap_or_default().trim_start_matches("error: ");
    // clap names the setting as `--flag <VARIABLE>`; the environment variable is the part in <>.
    let variable =
        detail.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(v, _)| v).unwrap_or_default();
    let serving = std::env::args().nth(1).as_deref() == Some("serve");
    if serving && !variable.is_empty() {
        let worker_id = std::env::var("WORKER_ID").unwrap_or_else(|_| "falcon".into());
        falcon_app::telemetry::logging::init(&worker_id, "INFO");
        let message = e.kind().to_string();
        tracing::error!(error = detail, kind = message, variable, "Invalid configuration");
    }
    let _ = e.print();
    ExitCode::from(EXIT_CONFIG)
}
