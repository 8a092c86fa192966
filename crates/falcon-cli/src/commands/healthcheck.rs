//! `falcon healthcheck`: GET a worker's health endpoint on this host and exit 0 on 200,
//! 1 otherwise. The container image's HEALTHCHECK uses it, so the image needs no curl.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::Empty;
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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

async fn status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, driver) =
        http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    let req = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

pub fn run(args: &HealthcheckArgs) -> ExitCode {
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_secs_f64(args.timeout_seconds.max(0.01));
    match runtime.block_on(async { tokio::time::timeout(timeout, status(addr, &args.path)).await }) {
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
