//! `falcon healthcheck`: GET a worker's health endpoint on this host and exit 0 on 200,
//! 1 otherwise. The container image's HEALTHCHECK uses it, so the image needs no curl.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

#[derive(Args)]
pub struct HealthcheckArgs {
    /// Port of the worker on 127.0.0.1 (the worker's own `PORT`).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    port: u16,
    /// Endpoint to ask: /healthz (alive) or /readyz (ready for traffic).
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 2.0)]
    timeout_seconds: f64,
}

async fn status(port: u16, path: &str) -> Result<u16, String> {
    crate::client::get(&format!("http://127.0.0.1:{port}{path}")).await.map(|(status, _)| status)
}

pub fn run(args: &HealthcheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_secs_f64(args.timeout_seconds.max(0.01));
    match runtime.block_on(async { tokio::time::timeout(timeout, status(args.port, &args.path)).await }) {
        Ok(Ok(200)) => ExitCode::SUCCESS,
        Ok(Ok(code)) => {
            eprintln!("unhealthy: {} answered {code}", args.path);
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("unhealthy: no answer within {timeout:?}");
            ExitCode::FAILURE
        }
    }
}
