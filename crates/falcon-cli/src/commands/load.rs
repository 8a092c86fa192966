//! An HTTP load generator: N keep-alive connections, for a fixed duration. Closed loop by
//! default (each connection sends its next request as soon as the previous answer
//! arrives: the maximum rate). With `--rate`, open loop: requests are due on a fixed
//! schedule whatever the answers do, and each latency is measured from when the request
//! was due, so a stall shows in the percentiles instead of slowing the sender (no
//! coordinated omission). Loopback only in our tests and benchmarks.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// POST /infer/batch with 64 different texts every request (texts/s = 64 × req/s).
    UniqueBatch,
}

/// Texts per request of the `unique-batch` scenario (the default `MAX_BATCH_TEXTS`).
pub const BATCH_TEXTS: usize = 64;

#[derive(Args)]
pub struct LoadArgs {
    /// Worker or proxy address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Scenarios to run, one after the other; ratios are against the first `healthz` run.
    #[arg(long = "scenario", value_enum, num_args = 1.., default_values = ["healthz", "same-text", "unique-text"])]
    scenarios: Vec<Scenario>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// How long to send per scenario, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured warm-up per scenario, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Interleave the scenarios in this many rounds (each gets `duration / rounds` a round).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Open loop: offer this many requests per second in all, on a fixed schedule, instead
    /// of as many as the server answers.
    #[arg(long)]
    rate: Option<f64>,
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

/// Numbers every unique-text request of this process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Distinguishes this run from earlier ones against the same worker (its cache outlives us).
fn run_nonce() -> u128 {
    static NONCE: OnceLock<u128> = OnceLock::new();
    *NONCE.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()))
}

/// The path and body of a scenario's next request (`None`: GET /healthz).
fn body_for(scenario: Scenario) -> Option<(&'static str, String)> {
    let infer = |b: String| Some(("/infer", b));
    match scenario {
        Scenario::Healthz => None,
        Scenario::SameText => infer(format!("{{\"text\":\"{SENTENCE}\"}}")),
        // Run nonce + sequence number: every normalised text is new, so every request misses the cache.
        Scenario::UniqueText => {
            let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            infer(format!("{{\"text\":\"{SENTENCE} r{} n{n}\"}}", run_nonce()))
        }
        Scenario::UniqueBatch => {
            let first = SEQUENCE.fetch_add(BATCH_TEXTS as u64, Ordering::Relaxed);
            let nonce = run_nonce();
            let texts: Vec<String> =
                (first..first + BATCH_TEXTS as u64).map(|n| format!("\"{SENTENCE} r{nonce} n{n}\"")).collect();
            Some(("/infer/batch", format!("{{\"texts\":[{}]}}", texts.join(","))))
        }
    }
}

struct ConnStats {
    latencies_us: Vec<u32>,
    ok: u64,
    failed: u64,
}

/// One connection's requests: as fast as answered, or one every `interval` (open loop).
async fn connection(addr: SocketAddr, scenario: Scenario, until: Instant, interval: Option<Duration>) -> ConnStats {
    let mut stats = ConnStats { latencies_us: Vec::with_capacity(100_000), ok: 0, failed: 0 };
    let mut due = Instant::now();
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
            let builder = Request::builder().header(hyper::header::HOST, addr.to_string());
            let req = match body_for(scenario) {
                None => builder.method("GET").uri("/healthz").body(Empty::new().map_err(|e| match e {}).boxed()),
                Some((path, b)) => builder
                    .method("POST")
                    .uri(path)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(b)).map_err(|e| match e {}).boxed()),
            };
            let Ok(req) = req else {
                stats.failed += 1;
                continue;
            };
            let t = match interval {
                Some(every) => {
                    let this = due;
                    due += every;
                    if this >= until {
                        driver.abort();
                        return stats;
                    }
                    if Instant::now() < this {
                        // Early: wait, and time from the send (the timer's own lateness,
                        // up to a millisecond, is the generator's, not the server's).
                        tokio::time::sleep_until(this.into()).await;
                        Instant::now()
                    } else {
                        // Late because the last answer was: time from when it was due.
                        this
                    }
                }
                None => Instant::now(),
            };
            // A server (nginx after `keepalive_requests`) may end the connection with
            // `Connection: close` on an answer: reconnect then, rather than send into a
            // closing connection and count the server's orderly close as a failure.
            let (result, closing) = match sender.send_request(req).await {
                Ok(resp) => {
                    let success = resp.status().is_success();
                    let closing = resp.headers().get(hyper::header::CONNECTION).is_some_and(|v| v == "close");
                    (resp.into_body().collect().await.is_ok() && success, closing)
                }
                Err(_) => (false, true),
            };
            stats.latencies_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            if result {
                stats.ok += 1;
                if closing {
                    driver.abort();
                    continue 'reconnect;
                }
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

/// What one or more runs of a scenario measured.
#[derive(Default)]
struct Raw {
    latencies_us: Vec<u32>,
    ok: u64,
    failed: u64,
    elapsed: f64,
}

/// How the load is offered: closed loop, or a total rate in requests per second.
#[derive(Debug, Clone, Copy)]
pub enum Offered {
    Closed,
    Rate(f64),
}

async fn drive_raw(
    addr: SocketAddr,
    scenario: Scenario,
    connections: usize,
    offered: Offered,
    duration: Duration,
    into: &mut Raw,
) {
    let started = Instant::now();
    let until = started + duration;
    let interval = match offered {
        Offered::Closed => None,
        Offered::Rate(rps) => Some(Duration::from_secs_f64(connections as f64 / rps.max(0.001))),
    };
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            // Spread the connections' schedules over one interval.
            let stagger = interval.map_or(Duration::ZERO, |every| every.mul_f64(i as f64 / connections as f64));
            tokio::spawn(async move {
                tokio::time::sleep(stagger).await;
                connection(addr, scenario, until, interval).await
            })
        })
        .collect();
    for t in tasks {
        if let Ok(s) = t.await {
            into.latencies_us.extend_from_slice(&s.latencies_us);
            into.ok += s.ok;
            into.failed += s.failed;
        }
    }
    into.elapsed += started.elapsed().as_secs_f64();
}

fn summarise(scenario: Scenario, connections: usize, mut raw: Raw) -> Report {
    raw.latencies_us.sort_unstable();
    let l = &raw.latencies_us;
    Report {
        scenario,
        connections,
        duration_s: raw.elapsed,
        requests: raw.ok + raw.failed,
        ok: raw.ok,
        failed: raw.failed,
        rps: if raw.elapsed > 0.0 { raw.ok as f64 / raw.elapsed } else { 0.0 },
        p50_ms: percentile(l, 0.50),
        p99_ms: percentile(l, 0.99),
        max_ms: l.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
    }
}

/// Runs the scenarios interleaved: `rounds` times each, for `duration / rounds` a time,
/// so a slow moment of a shared machine falls on every scenario alike.
pub async fn drive_interleaved(
    addr: SocketAddr,
    scenarios: &[Scenario],
    connections: usize,
    offered: Offered,
    duration: Duration,
    warmup: Duration,
    rounds: u32,
) -> Vec<Report> {
    let mut raws: Vec<Raw> = scenarios.iter().map(|_| Raw::default()).collect();
    for &scenario in scenarios {
        if !warmup.is_zero() {
            drive_raw(addr, scenario, connections, offered, warmup, &mut Raw::default()).await;
        }
    }
    let slice = duration / rounds.max(1);
    for _ in 0..rounds.max(1) {
        for (raw, &scenario) in raws.iter_mut().zip(scenarios) {
            drive_raw(addr, scenario, connections, offered, slice, raw).await;
        }
    }
    scenarios.iter().zip(raws).map(|(&s, raw)| summarise(s, connections, raw)).collect()
}

pub fn run(args: &LoadArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let connections = args.connections.max(1);
    let reports = runtime.block_on(drive_interleaved(
        args.addr,
        &args.scenarios,
        connections,
        args.rate.map_or(Offered::Closed, Offered::Rate),
        Duration::from_secs_f64(args.duration),
        Duration::from_secs_f64(args.warmup),
        args.rounds,
    ));
    for report in &reports {
        if let Ok(line) = serde_json::to_string(report) {
            println!("{line}");
        }
    }
    print!("{}", table(&reports));
    if reports.iter().any(|r| r.ok == 0) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// A table of the runs with each one's throughput as a ratio to the `healthz` run.
pub fn table(reports: &[Report]) -> String {
    use std::fmt::Write as _;
    let floor = reports.iter().find(|r| matches!(r.scenario, Scenario::Healthz)).map(|r| r.rps);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12} {:>6} {:>10} {:>8} {:>10} {:>9} {:>9} {:>11}",
        "scenario", "conns", "requests", "failed", "req/s", "p50 ms", "p99 ms", "vs healthz"
    );
    for r in reports {
        let ratio = floor.filter(|f| *f > 0.0).map_or_else(|| "-".to_owned(), |f| format!("{:.2}", r.rps / f));
        let name =
            serde_json::to_value(r.scenario).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<12} {:>6} {:>10} {:>8} {:>10.0} {:>9.3} {:>9.3} {:>11}",
            name, r.connections, r.requests, r.failed, r.rps, r.p50_ms, r.p99_ms, ratio
        );
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
    use super::*;

    /// A server that ends every connection after one answer with `Connection: close` (as
    /// nginx does after `keepalive_requests`): an orderly close is not a failed request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_close_answer_is_not_counted_as_a_failure() {
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { ([(hyper::header::CONNECTION, "close")], "{}") }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let reports = drive_interleaved(
            addr,
            &[Scenario::Healthz],
            4,
            Offered::Closed,
            Duration::from_millis(500),
            Duration::ZERO,
            1,
        )
        .await;
        server.abort();
        assert_eq!(reports[0].failed, 0, "{:?}", reports[0]);
        assert!(reports[0].ok > 20, "{:?}", reports[0]);
    }
}
