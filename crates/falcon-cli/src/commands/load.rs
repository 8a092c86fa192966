//! A closed-loop HTTP load generator: N keep-alive connections, each sending its next
//! request as soon as the previous answer arrives, for a fixed duration. Loopback only in
//! our tests and benchmarks.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// GET /healthz: the floor every other figure is compared with.
    Healthz,
    /// POST /infer with one text, repeated (cache hits after the first).
    SameText,
    /// POST /infer with a different text every request (cache misses, real inference).
    UniqueText,
}

#[derive(Args)]
pub struct LoadArgs {
    /// Worker or proxy address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    #[arg(long, value_enum, default_value = "unique-text")]
    scenario: Scenario,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

/// The figures of one run, printed as one JSON line.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub connections: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

const SENTENCE: &str =
    "the service was quick and the staff were friendly but the food arrived cold and the bill was wrong";

fn body_for(scenario: Scenario, conn: usize, n: u64) -> Option<String> {
    match scenario {
        Scenario::Healthz => None,
        Scenario::SameText => Some(format!("{{\"text\":\"{SENTENCE}\"}}")),
        // The counter makes each normalised text distinct, so every request misses the cache.
        Scenario::UniqueText => Some(format!("{{\"text\":\"{SENTENCE} c{conn} n{n}\"}}")),
    }
}

struct ConnStats {
    latencies_us: Vec<u32>,
    ok: u64,
    failed: u64,
}

async fn connection(addr: SocketAddr, scenario: Scenario, conn: usize, until: Instant) -> ConnStats {
    let mut stats = ConnStats { latencies_us: Vec::with_capacity(100_000), ok: 0, failed: 0 };
    let mut n = 0u64;
    'reconnect: while Instant::now() < until {
        let Ok(stream) = TcpStream::connect(addr).await else {
            stats.failed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, driver)) = http1::handshake::<_, BoxBody<Bytes, hyper::Error>>(TokioIo::new(stream)).await
        else {
            stats.failed += 1;
            continue;
        };
        let driver = tokio::spawn(driver);
        while Instant::now() < until {
            n += 1;
            let builder = Request::builder().header(hyper::header::HOST, addr.to_string());
            let req = match body_for(scenario, conn, n) {
                None => builder.method("GET").uri("/healthz").body(Empty::new().map_err(|e| match e {}).boxed()),
                Some(b) => builder
                    .method("POST")
                    .uri("/infer")
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(b)).map_err(|e| match e {}).boxed()),
            };
            let Ok(req) = req else {
                stats.failed += 1;
                continue;
            };
            let t = Instant::now();
            let result = match sender.send_request(req).await {
                Ok(resp) => {
                    let success = resp.status().is_success();
                    resp.into_body().collect().await.is_ok() && success
                }
                Err(_) => false,
            };
            stats.latencies_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            if result {
                stats.ok += 1;
            } else {
                stats.failed += 1;
                driver.abort();
                continue 'reconnect;
            }
        }
        driver.abort();
    }
    stats
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Runs one load scenario against `addr`.
pub async fn drive(addr: SocketAddr, scenario: Scenario, connections: usize, duration: Duration) -> Report {
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = (0..connections).map(|c| tokio::spawn(connection(addr, scenario, c, until))).collect();
    let mut latencies = Vec::new();
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        if let Ok(s) = t.await {
            latencies.extend_from_slice(&s.latencies_us);
            ok += s.ok;
            failed += s.failed;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Report {
        scenario,
        connections,
        duration_s: elapsed,
        requests: ok + failed,
        ok,
        failed,
        rps: ok as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
    }
}

pub fn run(args: &LoadArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(drive(
        args.addr,
        args.scenario,
        args.connections.max(1),
        Duration::from_secs_f64(args.duration),
    ));
    match serde_json::to_string(&report) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("error: {e}"),
    }
    if report.ok == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
