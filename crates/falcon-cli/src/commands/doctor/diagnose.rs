//! From what was seen to findings: each names the runbook incident (#1–#6), the likely
//! cause, the evidence in numbers and the commands that resolve it. The thresholds are the
//! alert rules' (deploy/prometheus/alerts/inference_alerts.yml), so the doctor and the
//! pager agree.

use serde::Serialize;

use super::gather::{PostgresSeen, RedisSeen, Seen, WorkerSeen};
use super::playbook::{Action, Playbook, SQL_CONNECTIONS, SQL_LONG_QUERIES, SQL_ROWS_LAST_MINUTE};
use super::prom::{Scrape, bucket_increase, increase, quantile};

/// HighP95Latency / VeryHighP95Latency.
const P95_WARN_SECONDS: f64 = 0.25;
const P95_CRITICAL_SECONDS: f64 = 1.0;
/// HighErrorRate / VeryHighErrorRate: server-side errors over requests.
const ERROR_RATE_WARN: f64 = 0.01;
const ERROR_RATE_CRITICAL: f64 = 0.05;
/// The error types that are the service's fault (the alerts' regex).
const SERVER_ERRORS: [&str; 5] = ["internal_error", "inference_timeout", "request_timeout", "overloaded", "not_ready"];
/// DatabaseOperationSlow: p95 of a request-log batch write.
const DB_P95_SLOW_SECONDS: f64 = 0.5;
/// HighMemoryUsage: 75 % of compose's 1 GiB limit.
const MEMORY_ALERT_BYTES: f64 = 768.0 * 1024.0 * 1024.0;
/// Growth that no bounded cache explains: 1 MiB/s sustained over the window.
const MEMORY_SLOPE_WARN: f64 = 1024.0 * 1024.0;
/// A spool this large and growing means the database is not keeping up.
const SPOOL_WARN_BYTES: f64 = 1024.0 * 1024.0;
/// A worker younger than this restarted recently.
const RECENT_START_SECONDS: f64 = 120.0;
/// HighRetryRate: Redis retries per request.
const RETRIES_PER_REQUEST_WARN: f64 = 0.05;
/// Redis round trip that is slow on a LAN.
const REDIS_PING_SLOW_MS: f64 = 50.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub incident: u8,
    pub incident_name: &'static str,
    pub severity: Severity,
    /// The worker it concerns, or none for a shared dependency.
    pub worker: Option<String>,
    pub title: String,
    pub cause: String,
    pub evidence: Vec<String>,
    pub commands: Vec<String>,
}

pub fn incident_name(incident: u8) -> &'static str {
    match incident {
        1 => "High Latency",
        2 => "High Error Rate",
        3 => "Worker Crash Loop",
        4 => "Redis Down / Circuit Breaker Open",
        5 => "Database Down / Logs Being Dropped",
        6 => "Memory Usage Increasing",
        _ => "Prediction Drift",
    }
}

/// What the two scrapes of one worker say, as rates over the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerStats {
    pub name: String,
    pub url: String,
    pub alive: bool,
    pub ready: Option<bool>,
    pub draining: bool,
    pub requests_per_second: Option<f64>,
    pub server_error_rate: Option<f64>,
    pub errors_by_type: Vec<(String, f64)>,
    pub p95_seconds: Option<f64>,
    pub cache_hit_rate: Option<f64>,
    pub retries_per_second: Option<f64>,
    pub cache_errors: f64,
    pub dropped_logs_total: f64,
    pub dropped_logs_new: f64,
    pub dead_letters_new: f64,
    pub spool_bytes: Option<f64>,
    pub spool_bytes_per_second: Option<f64>,
    pub log_buffer: Option<f64>,
    pub db_write_p95_seconds: Option<f64>,
    pub db_write_errors_new: f64,
    pub breakers: Vec<(String, f64)>,
    pub memory_bytes: Option<f64>,
    pub memory_bytes_per_second: Option<f64>,
    pub debug_memory_growth: bool,
    pub uptime_seconds: Option<f64>,
    pub restarted_between_scrapes: bool,
    /// Answers by model and predicted class since the worker started.
    pub predictions_by_class: Vec<(ModelClass, f64)>,
    /// Each served model's reference class mix (from its file), by model and class.
    pub reference_shares: Vec<(ModelClass, f64)>,
    /// The default model's version.
    pub model_version: Option<String>,
    /// Shadow model: sampled texts it agreed / disagreed on, since start.
    pub shadow_agreed: f64,
    pub shadow_disagreed: f64,
    /// `REQUEST_LOG_RETENTION_DAYS`, when the worker exports it.
    pub retention_days: Option<f64>,
    /// When the request log's maintenance last completed (Unix time; 0: not yet).
    pub log_maintained_at: Option<f64>,
    /// The request log's database size, as the worker last read it.
    pub log_database_bytes: Option<f64>,
}

impl WorkerStats {
    pub fn from_seen(w: &WorkerSeen) -> Self {
        let name = w
            .ready_body
            .as_ref()
            .and_then(|b| b.get("worker_id"))
            .and_then(|v| v.as_str())
            .map_or_else(|| w.target.name.clone(), str::to_owned);
        let mut s = WorkerStats {
            name,
            url: w.target.url.clone(),
            alive: w.health.ok(),
            ready: w.ready.status.map(|code| code == 200),
            draining: w.ready_body.as_ref().and_then(|b| b.get("draining")).and_then(|v| v.as_bool()).unwrap_or(false),
            ..WorkerStats::default()
        };
        let (Some(a), Some(b)) = (&w.first, &w.second) else { return s };
        let secs = w.window.as_secs_f64().max(1e-3);
        let grown = |name: &str, filter: &[(&str, &str)]| increase(a.total(name, filter), b.total(name, filter));

        let requests = grown("inference_requests_total", &[]);
        s.requests_per_second = Some(requests / secs);
        let errors: Vec<(String, f64)> = b
            .by_label("inference_errors_total", "error_type")
            .into_iter()
            .map(|(t, after)| {
                let before = a.series("inference_errors_total", &[("error_type", &t)]).map(|x| x.value).sum();
                let n = increase(before, after);
                (t, n)
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        // fold, not sum: an empty f64 sum is -0.0, which prints as "-0.00".
        let server =
            errors.iter().filter(|(t, _)| SERVER_ERRORS.contains(&t.as_str())).fold(0.0, |acc, (_, n)| acc + n);
        if requests > 0.0 {
            s.server_error_rate = Some(server / requests);
        }
        s.errors_by_type = errors;
        let latency =
            bucket_increase(&a.buckets("inference_duration_seconds"), &b.buckets("inference_duration_seconds"));
        s.p95_seconds = quantile(0.95, &latency);
        let hits = grown("cache_hits_total", &[]);
        let misses = grown("cache_misses_total", &[]);
        if hits + misses > 0.0 {
            s.cache_hit_rate = Some(hits / (hits + misses));
        }
        s.retries_per_second = Some(grown("retry_attempts_total", &[]) / secs);
        s.cache_errors = grown("cache_errors_total", &[]);
        s.dropped_logs_total = b.total("dropped_logs_total", &[]);
        s.dropped_logs_new = grown("dropped_logs_total", &[]);
        s.dead_letters_new = grown("log_dead_letter_total", &[]);
        s.spool_bytes = b.sum("log_spool_bytes", &[]);
        s.spool_bytes_per_second = gauge_slope(a, b, "log_spool_bytes", secs);
        s.log_buffer = b.sum("log_buffer_size", &[]);
        let db =
            bucket_increase(&a.buckets("db_operation_duration_seconds"), &b.buckets("db_operation_duration_seconds"));
        s.db_write_p95_seconds = quantile(0.95, &db);
        s.db_write_errors_new = grown("db_operations_total", &[("status", "error")]);
        s.breakers = b.by_label("circuit_breaker_state", "dependency");
        s.memory_bytes = b.sum("memory_usage_bytes", &[]);
        s.memory_bytes_per_second = gauge_slope(a, b, "memory_usage_bytes", secs);
        s.debug_memory_growth = b.total("debug_memory_growth_enabled", &[]) >= 1.0;
        s.predictions_by_class = by_model_and_class(b, "model_predictions_total");
        s.reference_shares = by_model_and_class(b, "model_reference_class_share");
        s.model_version = b
            .series("falcon_build_info", &[])
            .find(|x| x.value >= 1.0)
            .and_then(|x| x.labels.get("model_version").cloned());
        s.shadow_agreed = b.total("shadow_agreement_total", &[("outcome", "agree")]);
        s.shadow_disagreed = b.total("shadow_agreement_total", &[("outcome", "disagree")]);
        s.retention_days = b.sum("request_log_retention_days", &[]);
        s.log_maintained_at = b.sum("request_log_maintenance_last_success_timestamp_seconds", &[]);
        s.log_database_bytes = b.sum("request_log_database_bytes", &[]);
        let started = (a.sum("process_start_time_seconds", &[]), b.sum("process_start_time_seconds", &[]));
        if let (Some(before), Some(after)) = started {
            s.restarted_between_scrapes = (after - before).abs() > 0.5;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            s.uptime_seconds = Some((now.as_secs_f64() - after).max(0.0));
        }
        s
    }

    fn breaker(&self, dependency: &str) -> f64 {
        self.breakers.iter().find(|(d, _)| d == dependency).map_or(0.0, |(_, v)| *v)
    }
}

fn gauge_slope(a: &Scrape, b: &Scrape, name: &str, secs: f64) -> Option<f64> {
    Some((b.sum(name, &[])? - a.sum(name, &[])?) / secs)
}

/// The diagnosis: every finding, most severe first.
pub fn diagnose(seen: &Seen, stats: &[WorkerStats], book: &Playbook) -> Vec<Finding> {
    let mut findings = Vec::new();
    let oldest = stats.iter().filter_map(|s| s.uptime_seconds).fold(0.0, f64::max);
    for (w, s) in seen.workers.iter().zip(stats) {
        crash_loop(w, s, oldest, book, &mut findings);
        errors(s, book, &mut findings);
        latency(s, seen, book, &mut findings);
        memory(s, book, &mut findings);
        log_maintenance(s, book, &mut findings);
    }
    slow_database(seen, stats, book, &mut findings);
    drift(stats, book, &mut findings);
    redis(seen.redis.as_ref(), stats, book, &mut findings);
    postgres(seen.postgres.as_ref(), stats, book, &mut findings);
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.incident.cmp(&b.incident)));
    findings
}

/// How long the request log's maintenance (hourly) may go without completing before it is a
/// finding: two missed runs.
const MAINTENANCE_OVERDUE_SECONDS: f64 = 2.0 * 3600.0 + 300.0;

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// A worker whose request-log maintenance has not completed for two runs: partitions are not
/// made ahead and nothing past retention is removed, so the log's disk grows until it fills.
fn log_maintenance(s: &WorkerStats, book: &Playbook, out: &mut Vec<Finding>) {
    let (Some(days), Some(at), Some(uptime)) = (s.retention_days, s.log_maintained_at, s.uptime_seconds) else {
        return;
    };
    let since = if at > 0.0 { unix_now() - at } else { uptime };
    if since < MAINTENANCE_OVERDUE_SECONDS {
        return;
    }
    let name = s.name.as_str();
    let mut f = finding(
        5,
        Severity::Warning,
        Some(name),
        format!("{name}: request-log maintenance has not completed for {}", human_duration(since)),
        if days > 0.0 {
            format!(
                "rows past the {days:.0}-day retention are not being removed and the coming days' partitions are \
                 not made: the request log's disk grows until it fills; its WARN lines name the failing step"
            )
        } else {
            "the coming days' partitions are not made (retention is off: REQUEST_LOG_RETENTION_DAYS=0); its WARN \
             lines name the failing step"
                .into()
        },
    );
    if let Some(bytes) = s.log_database_bytes {
        f.evidence.push(format!("request-log database {}", human_bytes(bytes)));
    }
    if let Some(bytes) = s.spool_bytes {
        f.evidence.push(format!("spool {}", human_bytes(bytes)));
    }
    f.commands.push(book.command(&Action::WorkerErrors(name)));
    f.commands.push(book.command(&Action::PruneLog(if days > 0.0 { days as u32 } else { 30 })));
    out.push(f);
}

fn human_duration(seconds: f64) -> String {
    if seconds >= 2.0 * 86_400.0 {
        format!("{:.0} days", seconds / 86_400.0)
    } else if seconds >= 2.0 * 3600.0 {
        format!("{:.0} hours", seconds / 3600.0)
    } else {
        format!("{:.0} minutes", seconds / 60.0)
    }
}

fn finding(incident: u8, severity: Severity, worker: Option<&str>, title: String, cause: String) -> Finding {
    Finding {
        incident,
        incident_name: incident_name(incident),
        severity,
        worker: worker.map(str::to_owned),
        title,
        cause,
        evidence: Vec::new(),
        commands: Vec::new(),
    }
}

/// `oldest`: the longest uptime among the workers. One worker much younger than its peers
/// restarted on its own; a whole deployment started together is just new.
fn crash_loop(w: &WorkerSeen, s: &WorkerStats, oldest: f64, book: &Playbook, out: &mut Vec<Finding>) {
    let name = s.name.as_str();
    if !s.alive {
        let mut f = finding(
            3,
            Severity::Critical,
            Some(name),
            format!("{name} does not answer /healthz"),
            match &w.last_error {
                Some(e) => format!("it exited or never started: its last ERROR line says \"{e}\""),
                None => "it exited, never started, or is wedged: its start-up ERROR line names the cause (bad \
                         configuration, unreadable model, port in use)"
                    .into(),
            },
        );
        f.evidence.push(format!(
            "GET {}/healthz: {}",
            s.url,
            w.health.error.clone().unwrap_or_else(|| format!("HTTP {}", w.health.status.unwrap_or(0)))
        ));
        if let Some(alive) = w.process_alive {
            f.evidence.push(format!("process: {}", if alive { "running" } else { "not running" }));
        }
        f.commands.push(book.command(&Action::WorkerErrors(name)));
        f.commands.push(book.command(&Action::WorkerEnv(name, "-E '(REDIS|POSTGRES|DATABASE|MODEL)'")));
        f.commands.push(book.command(&Action::RestartWorker(name)));
        out.push(f);
        return;
    }
    let young = s.uptime_seconds.is_some_and(|u| u < RECENT_START_SECONDS && oldest - u > RECENT_START_SECONDS);
    if s.restarted_between_scrapes || young {
        let mut f = finding(
            3,
            Severity::Warning,
            Some(name),
            format!("{name} restarted recently"),
            "a restart the operator did not make is a crash (OOM kill, panic, failed health check)".into(),
        );
        if let Some(u) = s.uptime_seconds {
            f.evidence.push(format!("uptime {u:.0} s (the oldest worker: {oldest:.0} s)"));
        }
        if s.restarted_between_scrapes {
            f.evidence.push("process_start_time_seconds changed between the two scrapes".into());
        }
        f.commands.push(book.command(&Action::WorkerErrors(name)));
        out.push(f);
    }
}

fn errors(s: &WorkerStats, book: &Playbook, out: &mut Vec<Finding>) {
    let name = s.name.as_str();
    if s.ready == Some(false) && !s.draining {
        let mut f = finding(
            2,
            Severity::Critical,
            Some(name),
            format!("{name} is not ready (/readyz 503)"),
            "the model is not loaded or the worker is overloaded; the load balancer sends it no traffic".into(),
        );
        f.commands.push(format!("curl -s {}/readyz | jq", s.url));
        f.commands.push(book.command(&Action::WorkerErrors(name)));
        f.commands.push(book.command(&Action::RestartWorker(name)));
        out.push(f);
    }
    let Some(rate) = s.server_error_rate.filter(|r| *r > ERROR_RATE_WARN) else { return };
    let severity = if rate > ERROR_RATE_CRITICAL { Severity::Critical } else { Severity::Warning };
    let top = s
        .errors_by_type
        .iter()
        .filter(|(t, _)| SERVER_ERRORS.contains(&t.as_str()))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or("", |(t, _)| t.as_str());
    let cause = match top {
        "inference_timeout" => "inference takes longer than INFERENCE_TIMEOUT_SECONDS: the timeout is set too low \
                                for this model, or the inference threads are starved of CPU"
            .to_owned(),
        "overloaded" => "the inference queue is full (INFERENCE_QUEUE_CAPACITY): more traffic than the workers' \
                         CPUs; add workers or capacity"
            .to_owned(),
        "request_timeout" => "whole requests exceed REQUEST_TIMEOUT_SECONDS: look at latency (incident #1)".to_owned(),
        "not_ready" => "requests reach a worker that is not ready (starting, draining or without its model)".to_owned(),
        _ => "internal errors: a bug or a broken dependency; the ERROR lines carry the cause".to_owned(),
    };
    let mut f =
        finding(2, severity, Some(name), format!("{name}: {:.1} % of requests fail server-side", rate * 100.0), cause);
    let by_type: Vec<String> = s.errors_by_type.iter().map(|(t, n)| format!("{t} {n:.0}")).collect();
    f.evidence.push(format!("errors in the window by error_type: {}", by_type.join(", ")));
    if let Some(rps) = s.requests_per_second {
        f.evidence.push(format!("{rps:.1} requests/s"));
    }
    f.commands.push(book.command(&Action::Metrics(&s.url, "inference_errors_total")));
    f.commands.push(book.command(&Action::WorkerErrors(name)));
    if top == "inference_timeout" {
        f.commands.push(book.command(&Action::WorkerEnv(name, "INFERENCE_TIMEOUT_SECONDS")));
        f.commands.push(book.command(&Action::SetWorkerEnv(name, "INFERENCE_TIMEOUT_SECONDS=5")));
    }
    out.push(f);
}

fn latency(s: &WorkerStats, seen: &Seen, book: &Playbook, out: &mut Vec<Finding>) {
    let name = s.name.as_str();
    let redis_slow = seen.redis.as_ref().and_then(|r| r.ping_ms).is_some_and(|ms| ms > REDIS_PING_SLOW_MS);
    if let Some(p95) = s.p95_seconds.filter(|p| *p > P95_WARN_SECONDS) {
        let severity = if p95 > P95_CRITICAL_SECONDS { Severity::Critical } else { Severity::Warning };
        let cause = if redis_slow {
            "Redis is slow: every cache look-up waits on it"
        } else if s.cache_hit_rate.is_some_and(|h| h < 0.05) && s.requests_per_second.is_some_and(|r| r > 0.0) {
            "CPU: almost nothing is served from the cache, so every request runs the model"
        } else {
            "CPU or memory pressure on the worker, or the network in front of it"
        };
        let mut f = finding(1, severity, Some(name), format!("{name}: p95 latency {:.0} ms", p95 * 1e3), cause.into());
        f.evidence.push(format!("p95 {:.0} ms over the window (alert at {:.0} ms)", p95 * 1e3, P95_WARN_SECONDS * 1e3));
        if let Some(h) = s.cache_hit_rate {
            f.evidence.push(format!("cache hit rate {:.0} %", h * 100.0));
        }
        f.commands.push(book.command(&Action::Metrics(&s.url, "inference_duration_seconds_summary")));
        f.commands.push(book.command(&Action::Metrics(&s.url, "cache_hits_total|cache_misses_total")));
        if redis_slow {
            f.commands.push(book.command(&Action::RedisSlowlog));
        }
        out.push(f);
    }
}

/// The request log is off the request path, so a slow database shows as slow or failing
/// batch writes, sessions waiting on locks and a growing spool rather than slow answers; it
/// is still incident #1's "database is slow", and the operator should hear it before the
/// spool's disk fills.
fn slow_database(seen: &Seen, stats: &[WorkerStats], book: &Playbook, out: &mut Vec<Finding>) {
    let Some(pg) = seen.postgres.as_ref().filter(|p| p.error.is_none()) else { return };
    let waiting = pg.waiting_on_locks.unwrap_or(0);
    let slow_writes: Vec<&WorkerStats> =
        stats.iter().filter(|s| s.db_write_p95_seconds.is_some_and(|p| p > DB_P95_SLOW_SECONDS)).collect();
    // Failed writes while the database answers the doctor: timeouts, not an outage.
    let failing: Vec<&WorkerStats> =
        stats.iter().filter(|s| s.db_write_errors_new > 0.0 && s.breaker("postgres") == 0.0).collect();
    if pg.long_queries.is_empty() && waiting == 0 && slow_writes.is_empty() && failing.is_empty() {
        return;
    }
    let mut f = finding(
        1,
        Severity::Warning,
        None,
        "the database is slow".into(),
        "request-log writes to Postgres are slow or timing out (a lock, a long query or a trigger); answers are \
         not delayed: the rows wait in the spool and are written as the database catches up"
            .into(),
    );
    for q in &pg.long_queries {
        f.evidence.push(format!(
            "pid {} running {:.0} s (wait: {}): {}",
            q.pid,
            q.seconds,
            or_none(&q.wait_event_type),
            q.query
        ));
    }
    if waiting > 0 {
        f.evidence.push(format!("{waiting} sessions waiting on locks"));
    }
    if let Some(e) = &pg.rows_error {
        f.evidence.push(format!("counting inference_logs failed: {e}"));
    }
    for s in stats {
        let mut parts = Vec::new();
        if let Some(p) = s.db_write_p95_seconds {
            parts.push(format!("batch write p95 {:.0} ms (alert at {:.0} ms)", p * 1e3, DB_P95_SLOW_SECONDS * 1e3));
        }
        if s.db_write_errors_new > 0.0 {
            parts.push(format!("{:.0} failed writes", s.db_write_errors_new));
        }
        if let (Some(bytes), Some(slope)) = (s.spool_bytes, s.spool_bytes_per_second) {
            parts.push(format!("spool {} ({slope:+.0} B/s)", human_bytes(bytes)));
        }
        if let Some(p95) = s.p95_seconds {
            parts.push(format!("request p95 {:.1} ms", p95 * 1e3));
        }
        if !parts.is_empty() {
            f.evidence.push(format!("{}: {}", s.name, parts.join(", ")));
        }
    }
    f.commands.push(book.command(&Action::PostgresSql(SQL_LONG_QUERIES)));
    if let Some(s) = stats.first() {
        f.commands.push(book.command(&Action::Metrics(&s.url, "db_operation_duration_seconds|log_spool_bytes")));
    }
    out.push(f);
}

fn memory(s: &WorkerStats, book: &Playbook, out: &mut Vec<Finding>) {
    let name = s.name.as_str();
    let evidence = |f: &mut Finding| {
        if let Some(m) = s.memory_bytes {
            f.evidence.push(format!(
                "memory_usage_bytes {} (alert at {})",
                human_bytes(m),
                human_bytes(MEMORY_ALERT_BYTES)
            ));
        }
        if let Some(slope) = s.memory_bytes_per_second {
            f.evidence.push(format!("slope {}/s over the window", human_bytes(slope)));
        }
    };
    if s.debug_memory_growth {
        let mut f = finding(
            6,
            Severity::Critical,
            Some(name),
            format!("{name}: DEBUG_MEMORY_GROWTH is on"),
            "the memory-leak drill is enabled: every request keeps memory on purpose; disable it now".into(),
        );
        f.evidence.push("debug_memory_growth_enabled 1".into());
        evidence(&mut f);
        f.commands.push(book.command(&Action::WorkerEnv(name, "DEBUG_MEMORY_GROWTH")));
        f.commands.push(book.command(&Action::SetWorkerEnv(name, "DEBUG_MEMORY_GROWTH=false")));
        out.push(f);
        return;
    }
    let high = s.memory_bytes.is_some_and(|m| m > MEMORY_ALERT_BYTES);
    let growing = s.memory_bytes_per_second.is_some_and(|m| m > MEMORY_SLOPE_WARN);
    if high || growing {
        let mut f = finding(
            6,
            Severity::Warning,
            Some(name),
            format!("{name}: memory {}", if high { "above the alert threshold" } else { "growing fast" }),
            "every cache and buffer is bounded, so steady growth is a leak: capture it and restart the worker".into(),
        );
        evidence(&mut f);
        f.commands.push(book.command(&Action::Metrics(&s.url, "memory_usage_bytes")));
        f.commands.push(book.command(&Action::RestartWorker(name)));
        out.push(f);
    }
}

fn redis(seen: Option<&RedisSeen>, stats: &[WorkerStats], book: &Playbook, out: &mut Vec<Finding>) {
    let open: Vec<&WorkerStats> = stats.iter().filter(|s| s.breaker("redis") == 1.0).collect();
    let half: Vec<&WorkerStats> = stats.iter().filter(|s| s.breaker("redis") == 2.0).collect();
    let down = seen.and_then(|r| r.error.as_deref());
    if down.is_some() || !open.is_empty() || !half.is_empty() {
        let severity = if down.is_some() || !open.is_empty() { Severity::Critical } else { Severity::Warning };
        let title = match down {
            Some(_) => "Redis is unreachable".to_owned(),
            None => "the Redis circuit breaker is not closed".to_owned(),
        };
        let mut f = finding(
            4,
            severity,
            None,
            title,
            "requests are served without the shared cache and idempotency (fallback): answers keep flowing, the \
             model does all the work and duplicate requests are possible until Redis is back"
                .into(),
        );
        if let Some(e) = down {
            f.evidence.push(format!("{}: {e}", seen.map_or("", |r| r.url.as_str())));
        }
        for s in &open {
            f.evidence.push(format!("{}: circuit_breaker_state{{dependency=\"redis\"}} 1 (open)", s.name));
        }
        for s in &half {
            f.evidence.push(format!("{}: circuit_breaker_state{{dependency=\"redis\"}} 2 (half-open)", s.name));
        }
        f.commands.push(book.command(&Action::RedisPing));
        f.commands.push(book.command(&Action::RestartRedis));
        if let Some(s) = stats.first() {
            f.commands.push(book.command(&Action::Metrics(&s.url, "circuit_breaker_state.*redis")));
        }
        out.push(f);
        return;
    }
    for s in stats {
        let (Some(retries), Some(rps)) = (s.retries_per_second, s.requests_per_second) else { continue };
        if rps > 0.0 && retries / rps > RETRIES_PER_REQUEST_WARN {
            let mut f = finding(
                4,
                Severity::Warning,
                Some(&s.name),
                format!("{}: Redis calls are being retried", s.name),
                "Redis answers late or fails now and then: every retry adds latency, and the breaker opens if it \
                 gets worse"
                    .into(),
            );
            f.evidence.push(format!("{retries:.1} retries/s for {rps:.1} requests/s (alert at 5 %)"));
            f.commands.push(book.command(&Action::Metrics(&s.url, "retry_attempts_total")));
            f.commands.push(book.command(&Action::RedisSlowlog));
            out.push(f);
        }
    }
    let cache_errors = stats.iter().fold(0.0, |acc, s| acc + s.cache_errors);
    if cache_errors > 0.0 {
        let mut f = finding(
            4,
            Severity::Warning,
            None,
            "Redis calls are failing".into(),
            "timeouts or errors from Redis; the breaker opens if they continue".into(),
        );
        f.evidence.push(format!("{cache_errors:.0} cache errors in the window"));
        f.commands.push(book.command(&Action::RedisSlowlog));
        out.push(f);
    }
    let Some(r) = seen else { return };
    redis_eviction(r, book, out);
    if let (Some(used), Some(max)) = (r.used_memory, r.maxmemory.filter(|m| *m > 0)) {
        let share = used as f64 / max as f64;
        let noeviction = r.maxmemory_policy.as_deref() == Some("noeviction");
        if share > 0.9 && noeviction {
            let mut f = finding(
                4,
                Severity::Warning,
                None,
                format!("Redis is {:.0} % full with maxmemory-policy noeviction", share * 100.0),
                "writes fail once it is full: cache writes and idempotency claims will error".into(),
            );
            f.evidence.push(format!(
                "used_memory {} of maxmemory {}",
                human_bytes(used as f64),
                human_bytes(max as f64)
            ));
            f.commands.push(book.command(&Action::RedisMemory));
            out.push(f);
        }
    }
    if let Some(ms) = r.ping_ms.filter(|ms| *ms > REDIS_PING_SLOW_MS) {
        let mut f = finding(
            1,
            Severity::Warning,
            None,
            format!("Redis answers PING in {ms:.0} ms"),
            "Redis is slow or far away: every cache look-up waits on it".into(),
        );
        if let Some(n) = r.slowlog_len {
            f.evidence.push(format!("SLOWLOG LEN {n}"));
        }
        f.commands.push(book.command(&Action::RedisSlowlog));
        out.push(f);
    }
}

/// Redis near `maxmemory` or evicting, and a policy that may evict idempotency records.
fn redis_eviction(r: &RedisSeen, book: &Playbook, out: &mut Vec<Finding>) {
    let policy = r.maxmemory_policy.as_deref().unwrap_or("");
    let full = match (r.used_memory, r.maxmemory.filter(|m| *m > 0)) {
        (Some(used), Some(max)) => Some((used, max, used as f64 / max as f64)),
        _ => None,
    };
    let evicted = r.evicted_keys.unwrap_or(0);
    if policy.starts_with("allkeys-") {
        let mut f = finding(
            4,
            Severity::Warning,
            None,
            format!("Redis runs maxmemory-policy {policy}: it may evict idempotency records"),
            "a full Redis evicts any key, so a retried request can be computed twice; volatile-lru evicts only \
             cache entries (idempotency records carry no TTL)"
                .into(),
        );
        if evicted > 0 {
            f.evidence.push(format!("evicted_keys {evicted}"));
        }
        f.commands.push(book.command(&Action::RedisMemory));
        out.push(f);
    } else if policy != "noeviction" && (evicted > 0 || full.is_some_and(|(_, _, share)| share > 0.9)) {
        let mut f = finding(
            4,
            Severity::Warning,
            None,
            match full {
                Some((_, _, share)) if share > 0.9 => format!("Redis is {:.0} % of maxmemory", share * 100.0),
                _ => format!("Redis has evicted {evicted} keys"),
            },
            "cache entries give way to the maxmemory bound (idempotency records never do): the hit rate suffers, \
             and once only records are left, writes fail; raise maxmemory or lower the TTLs"
                .into(),
        );
        if let Some((used, max, _)) = full {
            f.evidence.push(format!(
                "used_memory {} of maxmemory {}",
                human_bytes(used as f64),
                human_bytes(max as f64)
            ));
        }
        f.evidence.push(format!("evicted_keys {evicted}, maxmemory-policy {}", or_none(policy)));
        f.commands.push(book.command(&Action::RedisMemory));
        out.push(f);
    }
}

fn postgres(seen: Option<&PostgresSeen>, stats: &[WorkerStats], book: &Playbook, out: &mut Vec<Finding>) {
    let open: Vec<&WorkerStats> = stats.iter().filter(|s| s.breaker("postgres") == 1.0).collect();
    let dropping: Vec<&WorkerStats> = stats.iter().filter(|s| s.dropped_logs_new > 0.0).collect();
    let spooling: Vec<&WorkerStats> = stats
        .iter()
        .filter(|s| {
            s.spool_bytes.is_some_and(|b| b > SPOOL_WARN_BYTES) && s.spool_bytes_per_second.is_some_and(|g| g > 0.0)
        })
        .collect();
    let down = seen.and_then(|p| p.error.as_deref());
    let spool_evidence = |f: &mut Finding| {
        for s in stats {
            if let Some(bytes) = s.spool_bytes.filter(|b| *b > 0.0) {
                let slope = s.spool_bytes_per_second.unwrap_or(0.0);
                f.evidence.push(format!(
                    "{}: spool {} ({:+.0} B/s), memory buffer {:.0}, dropped {:.0} total ({:.0} new)",
                    s.name,
                    human_bytes(bytes),
                    slope,
                    s.log_buffer.unwrap_or(0.0),
                    s.dropped_logs_total,
                    s.dropped_logs_new
                ));
            }
        }
    };
    if down.is_some() || !open.is_empty() || !dropping.is_empty() {
        let title = if !dropping.is_empty() {
            "request-log records are being dropped".to_owned()
        } else if down.is_some() {
            "Postgres is unreachable".to_owned()
        } else {
            "the Postgres circuit breaker is open".to_owned()
        };
        let cause = if dropping.is_empty() {
            "the request log cannot reach Postgres: answers are not affected; records are spooled to disk \
             (LOG_SPOOL_DIR) and buffered in memory, and replayed once the database is back"
        } else {
            "the spool is off or full (LOG_SPOOL_MAX_BYTES) and the memory buffer (LOG_BUFFER_SIZE) overflowed: \
             records are lost until Postgres is back"
        };
        let mut f = finding(5, Severity::Critical, None, title, cause.into());
        if let Some(e) = down {
            f.evidence.push(format!("{}: {e}", seen.map_or("", |p| p.url.as_str())));
        }
        for s in &open {
            f.evidence.push(format!("{}: circuit_breaker_state{{dependency=\"postgres\"}} 1 (open)", s.name));
        }
        spool_evidence(&mut f);
        f.commands.push(book.command(&Action::PostgresReady));
        f.commands.push(book.command(&Action::RestartPostgres));
        if let Some(s) = stats.first() {
            f.commands.push(book.command(&Action::Metrics(&s.url, "dropped_logs_total|log_spool_bytes")));
        }
        out.push(f);
        return;
    }
    if !spooling.is_empty() || stats.iter().any(|s| s.dead_letters_new > 0.0) {
        let mut f = finding(
            5,
            Severity::Warning,
            None,
            "the request log is falling behind".into(),
            "rows are written more slowly than requests arrive: they wait in the spool, nothing is lost while it \
             has room (LOG_SPOOL_MAX_BYTES)"
                .into(),
        );
        spool_evidence(&mut f);
        for s in stats.iter().filter(|s| s.dead_letters_new > 0.0) {
            f.evidence.push(format!("{}: {:.0} rows rejected to the dead-letter file", s.name, s.dead_letters_new));
        }
        f.commands.push(book.command(&Action::PostgresSql(SQL_LONG_QUERIES)));
        f.commands.push(book.command(&Action::PostgresSql(SQL_ROWS_LAST_MINUTE)));
        out.push(f);
    }
    let Some(p) = seen else { return };
    let used: i64 = p.connections_by_state.iter().map(|(_, n)| n).sum();
    if let Some(max) = p.max_connections.filter(|m| *m > 0 && used as f64 > 0.8 * *m as f64) {
        let mut f = finding(
            5,
            Severity::Warning,
            None,
            format!("Postgres has {used} of {max} connections in use"),
            "the connection limit is near: new connections will be refused".into(),
        );
        let states: Vec<String> = p.connections_by_state.iter().map(|(s, n)| format!("{s} {n}")).collect();
        f.evidence.push(states.join(", "));
        f.commands.push(book.command(&Action::PostgresSql(SQL_CONNECTIONS)));
        out.push(f);
    }
    expired_partitions(p, stats, book, out);
}

/// Day partitions of the request log still on disk two hours after retention expired them:
/// the database grows faster than retention removes it.
fn expired_partitions(p: &PostgresSeen, stats: &[WorkerStats], book: &Playbook, out: &mut Vec<Finding>) {
    let Some(partitions) = &p.log_partitions else { return };
    // The workers' retention; the default when no worker says.
    let days =
        stats.iter().filter_map(|s| s.retention_days).fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
    let days = days.unwrap_or(30.0);
    if days <= 0.0 {
        return;
    }
    let now = unix_now();
    let overdue: Vec<&str> = partitions
        .iter()
        .filter(|x| x.ends_unix.is_some_and(|end| end + days * 86_400.0 + MAINTENANCE_OVERDUE_SECONDS < now))
        .map(|x| x.name.as_str())
        .collect();
    if overdue.is_empty() {
        return;
    }
    let mut f = finding(
        5,
        Severity::Warning,
        None,
        format!("{} request-log partitions are past the {days:.0}-day retention and still on disk", overdue.len()),
        "the workers' hourly maintenance is not dropping them: the database grows faster than retention \
         removes it, until the disk fills"
            .into(),
    );
    let shown: Vec<&str> = overdue.iter().take(3).copied().collect();
    f.evidence.push(format!("oldest: {}{}", shown.join(", "), if overdue.len() > 3 { ", ..." } else { "" }));
    if let Some(bytes) = p.database_bytes {
        f.evidence.push(format!("database size {}", human_bytes(bytes as f64)));
    }
    f.commands.push(book.command(&Action::PruneLog(days as u32)));
    if let Some(s) = stats.first() {
        f.commands.push(book.command(&Action::WorkerErrors(&s.name)));
    }
    out.push(f);
}

/// PredictionDriftDetected's line: a population-stability index above 0.2.
const PSI_WARN: f64 = 0.2;
/// Fewer answers than this say nothing about a class mix.
const DRIFT_MIN_ANSWERS: f64 = 200.0;

/// The population-stability index of `live` counts against `reference` shares, by class:
/// sum of (p - q) * ln(p / q). A class the reference has but live traffic never got makes
/// it infinite.
pub fn psi(live: &[(String, f64)], reference: &[(String, f64)]) -> Option<f64> {
    let total: f64 = live.iter().map(|(_, n)| n).sum();
    if total <= 0.0 || reference.is_empty() {
        return None;
    }
    let index = reference
        .iter()
        .filter(|(_, q)| *q > 0.0)
        .map(|(class, q)| {
            let p = live.iter().find(|(c, _)| c == class).map_or(0.0, |(_, n)| n / total);
            (p - q) * (p / q).ln()
        })
        .sum();
    Some(index)
}

/// A model's name and one of its classes. Series of builds that served one model carry no
/// `model` label: they are the default model's, `sentiment`.
pub type ModelClass = (String, String);

/// `name`'s samples summed by model and class.
fn by_model_and_class(scrape: &Scrape, name: &str) -> Vec<(ModelClass, f64)> {
    let mut out: std::collections::BTreeMap<ModelClass, f64> = std::collections::BTreeMap::new();
    for sample in scrape.series(name, &[]) {
        let Some(class) = sample.labels.get("class") else { continue };
        let model = sample.labels.get("model").map_or("sentiment", String::as_str);
        *out.entry((model.to_owned(), class.clone())).or_default() += sample.value;
    }
    out.into_iter().collect()
}

/// Each model's class mix over the fleet since the workers started, against that model's
/// reference (incident #7): one finding per model that moved. The alert uses the last hour;
/// two scrapes only see since-start totals.
fn drift(stats: &[WorkerStats], book: &Playbook, out: &mut Vec<Finding>) {
    let mut live: std::collections::BTreeMap<&str, Vec<(String, f64)>> = std::collections::BTreeMap::new();
    for s in stats {
        for ((model, class), n) in &s.predictions_by_class {
            let classes = live.entry(model.as_str()).or_default();
            match classes.iter_mut().find(|(c, _)| c == class) {
                Some((_, total)) => *total += n,
                None => classes.push((class.clone(), *n)),
            }
        }
    }
    for (model, live) in live {
        // The model's reference, as the first worker that serves it reports it.
        let Some(reference) = stats
            .iter()
            .map(|s| s.reference_shares.iter().filter(|((m, _), _)| m == model).map(|((_, c), q)| (c.clone(), *q)))
            .map(Vec::from_iter)
            .find(|r| !r.is_empty())
        else {
            continue;
        };
        let answers: f64 = live.iter().map(|(_, n)| n).sum();
        let Some(index) = psi(&live, &reference).filter(|i| *i > PSI_WARN && answers >= DRIFT_MIN_ANSWERS) else {
            continue;
        };
        let mut f = finding(
            7,
            Severity::Warning,
            None,
            format!("the predicted class mix of model {model} moved away from its reference (PSI {index:.2})"),
            "the inputs changed (a new client or topic, one text sent over and over) or the model does not fit them"
                .into(),
        );
        let share = |n: f64| n / answers * 100.0;
        let mix: Vec<String> = live.iter().map(|(c, n)| format!("{c} {:.1} %", share(*n))).collect();
        let refs: Vec<String> = reference.iter().map(|(c, q)| format!("{c} {:.1} %", q * 100.0)).collect();
        f.evidence.push(format!("live mix of {model} over {answers:.0} answers since start: {}", mix.join(", ")));
        f.evidence.push(format!("reference (the model's test split): {}", refs.join(", ")));
        if let Some(s) = stats.first() {
            f.commands.push(book.command(&Action::Metrics(&s.url, "^model_(predictions_total|reference_class_share)")));
        }
        f.commands.push(book.command(&Action::PostgresSql(
            "SELECT model_name, text_hash, count(*) FROM inference_logs WHERE created_at > now() - interval '1 hour' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5;",
        )));
        out.push(f);
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

pub fn human_bytes(bytes: f64) -> String {
    let abs = bytes.abs();
    if abs >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", bytes / (1024.0 * 1024.0 * 1024.0))
    } else if abs >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    } else if abs >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::gather::{HttpAnswer, PartitionSeen, Target};
    use super::super::playbook::Shape;
    use super::*;

    fn answer(status: Option<u16>) -> HttpAnswer {
        HttpAnswer {
            status,
            error: status.is_none().then(|| "connection refused".into()),
            body: String::new(),
            millis: 1.0,
        }
    }

    fn worker(first: &str, second: &str) -> WorkerSeen {
        WorkerSeen {
            target: Target { name: "worker-1".into(), url: "http://w1".into(), pid_file: None, log_file: None },
            health: answer(Some(200)),
            ready: answer(Some(200)),
            ready_body: None,
            first: Some(Scrape::parse(first)),
            second: Some(Scrape::parse(second)),
            window: Duration::from_secs(2),
            process_alive: None,
            last_error: None,
        }
    }

    fn run(workers: Vec<WorkerSeen>) -> Vec<Finding> {
        let seen = Seen { workers, balancer: None, redis: None, postgres: None };
        let stats: Vec<_> = seen.workers.iter().map(WorkerStats::from_seen).collect();
        let book = Playbook { shape: Shape::Compose, stack_dir: None, redis: None, database: None };
        diagnose(&seen, &stats, &book)
    }

    const QUIET: &str = "inference_requests_total{status=\"success\"} 100\nmemory_usage_bytes 1e8\n\
                         process_start_time_seconds 1000\ncircuit_breaker_state{dependency=\"redis\"} 0\n";

    #[test]
    fn a_quiet_healthy_worker_has_no_findings() {
        assert!(run(vec![worker(QUIET, QUIET)]).is_empty());
    }

    #[test]
    fn server_errors_are_incident_2_with_the_cause_named() {
        let before = "inference_requests_total 100\ninference_errors_total{error_type=\"inference_timeout\"} 0\n\
                      inference_errors_total{error_type=\"validation_error\"} 0\n";
        let after = "inference_requests_total 200\ninference_errors_total{error_type=\"inference_timeout\"} 40\n\
                     inference_errors_total{error_type=\"validation_error\"} 50\n";
        let findings = run(vec![worker(before, after)]);
        let f = findings.iter().find(|f| f.incident == 2).unwrap_or_else(|| panic!("{findings:#?}"));
        assert_eq!(f.severity, Severity::Critical);
        assert!(f.title.contains("40.0 %"), "client errors are not counted: {}", f.title);
        assert!(f.cause.contains("INFERENCE_TIMEOUT_SECONDS"));
        assert!(f.commands.iter().any(|c| c.contains("docker compose logs")));
    }

    #[test]
    fn client_errors_alone_are_no_incident() {
        let after = "inference_requests_total 200\ninference_errors_total{error_type=\"validation_error\"} 90\n";
        assert!(run(vec![worker("inference_requests_total 100\n", after)]).is_empty());
    }

    #[test]
    fn a_dead_worker_is_a_crash_loop() {
        let mut w = worker(QUIET, QUIET);
        w.health = answer(None);
        w.first = None;
        w.second = None;
        w.last_error = Some("Failed to load the model".into());
        let findings = run(vec![w]);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!((findings[0].incident, findings[0].severity), (3, Severity::Critical));
        assert!(findings[0].cause.contains("Failed to load the model"));
    }

    #[test]
    fn a_restart_between_scrapes_is_noticed() {
        let after = QUIET.replace("process_start_time_seconds 1000", "process_start_time_seconds 2000");
        let findings = run(vec![worker(QUIET, &after)]);
        assert!(findings.iter().any(|f| f.incident == 3 && f.severity == Severity::Warning), "{findings:#?}");
    }

    #[test]
    fn slow_answers_are_incident_1() {
        let before = "inference_duration_seconds_bucket{le=\"0.5\"} 0\ninference_duration_seconds_bucket{le=\"2.5\"} 0\n\
                      inference_duration_seconds_bucket{le=\"+Inf\"} 0\n";
        let after = "inference_duration_seconds_bucket{le=\"0.5\"} 10\ninference_duration_seconds_bucket{le=\"2.5\"} 100\n\
                     inference_duration_seconds_bucket{le=\"+Inf\"} 100\n";
        let findings = run(vec![worker(before, after)]);
        let f = findings.iter().find(|f| f.incident == 1).unwrap_or_else(|| panic!("{findings:#?}"));
        assert_eq!(f.severity, Severity::Critical);
    }

    #[test]
    fn the_memory_drill_is_incident_6_and_says_how_to_turn_it_off() {
        let on = format!("{QUIET}debug_memory_growth_enabled 1\n");
        let findings = run(vec![worker(&on, &on)]);
        let f = findings.iter().find(|f| f.incident == 6).unwrap_or_else(|| panic!("{findings:#?}"));
        assert!(f.commands.iter().any(|c| c.contains("DEBUG_MEMORY_GROWTH=false")));
    }

    #[test]
    fn psi_is_zero_for_the_reference_mix_and_grows_with_the_shift() {
        let reference = vec![("a".to_owned(), 0.5), ("b".to_owned(), 0.5)];
        assert_eq!(psi(&[("a".into(), 50.0), ("b".into(), 50.0)], &reference), Some(0.0));
        let shifted = psi(&[("a".into(), 90.0), ("b".into(), 10.0)], &reference).unwrap_or_default();
        assert!((shifted - 0.4 * (9.0f64).ln()).abs() < 1e-9, "{shifted}");
        assert_eq!(psi(&[("a".into(), 10.0)], &reference), Some(f64::INFINITY));
        assert_eq!(psi(&[], &reference), None);
    }

    #[test]
    fn a_shifted_class_mix_is_incident_7() {
        let mix = |neg: u32, pos: u32| {
            format!(
                "model_predictions_total{{class=\"negative\"}} {neg}\nmodel_predictions_total{{class=\"positive\"}} {pos}\n\
                 model_reference_class_share{{class=\"negative\"}} 0.5\nmodel_reference_class_share{{class=\"positive\"}} 0.5\n"
            )
        };
        assert!(run(vec![worker(&mix(250, 250), &mix(250, 250))]).is_empty(), "the reference mix is fine");
        assert!(run(vec![worker(&mix(10, 10), &mix(20, 80))]).is_empty(), "too few answers to say");
        let findings = run(vec![worker(&mix(100, 300), &mix(100, 400))]);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!((findings[0].incident, findings[0].severity), (7, Severity::Warning));
        assert!(findings[0].title.contains("model sentiment"), "unlabelled series are the one model's");
    }

    /// Each model against its own reference: a steady second model with other classes
    /// neither fires nor hides the first one's drift.
    #[test]
    fn drift_is_per_model() {
        let two = |neg: u32, pos: u32| {
            format!(
                "model_predictions_total{{model=\"sentiment\",class=\"negative\"}} {neg}\n\
                 model_predictions_total{{model=\"sentiment\",class=\"positive\"}} {pos}\n\
                 model_reference_class_share{{model=\"sentiment\",class=\"negative\"}} 0.5\n\
                 model_reference_class_share{{model=\"sentiment\",class=\"positive\"}} 0.5\n\
                 model_predictions_total{{model=\"topics\",class=\"billing\"}} 500\n\
                 model_predictions_total{{model=\"topics\",class=\"shipping\"}} 500\n\
                 model_reference_class_share{{model=\"topics\",class=\"billing\"}} 0.5\n\
                 model_reference_class_share{{model=\"topics\",class=\"shipping\"}} 0.5\n"
            )
        };
        assert!(run(vec![worker(&two(250, 250), &two(250, 250))]).is_empty(), "both steady");
        let findings = run(vec![worker(&two(100, 300), &two(100, 400))]);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].title.contains("model sentiment"), "{}", findings[0].title);
    }

    #[test]
    fn an_open_breaker_or_drops_are_incidents_4_and_5() {
        let after = "circuit_breaker_state{dependency=\"redis\"} 1\ncircuit_breaker_state{dependency=\"postgres\"} 0\n\
                     dropped_logs_total 7\n";
        let findings = run(vec![worker("dropped_logs_total 2\n", after)]);
        let incidents: Vec<_> = findings.iter().map(|f| (f.incident, f.severity)).collect();
        assert_eq!(incidents, [(4, Severity::Critical), (5, Severity::Critical)], "{findings:#?}");
        assert!(findings[1].title.contains("dropped"));
    }

    fn run_with(redis: Option<RedisSeen>, postgres: Option<PostgresSeen>, workers: Vec<WorkerSeen>) -> Vec<Finding> {
        let seen = Seen { workers, balancer: None, redis, postgres };
        let stats: Vec<_> = seen.workers.iter().map(WorkerStats::from_seen).collect();
        let book = Playbook { shape: Shape::Compose, stack_dir: None, redis: None, database: None };
        diagnose(&seen, &stats, &book)
    }

    #[test]
    fn a_redis_that_evicts_or_may_evict_idempotency_records_is_incident_4() {
        let redis = |policy: &str, used: u64, evicted: u64| RedisSeen {
            used_memory: Some(used),
            maxmemory: Some(1000),
            maxmemory_policy: Some(policy.into()),
            evicted_keys: Some(evicted),
            ..RedisSeen::default()
        };
        assert!(run_with(Some(redis("volatile-lru", 500, 0)), None, vec![]).is_empty(), "room and no evictions");
        let evicting = run_with(Some(redis("volatile-lru", 500, 12)), None, vec![]);
        assert_eq!(evicting.len(), 1, "{evicting:#?}");
        assert_eq!((evicting[0].incident, evicting[0].severity), (4, Severity::Warning));
        assert!(evicting[0].title.contains("evicted 12 keys"), "{}", evicting[0].title);
        assert!(evicting[0].commands[0].contains("evicted_keys"), "{:?}", evicting[0].commands);
        let full = run_with(Some(redis("volatile-lru", 950, 0)), None, vec![]);
        assert!(full[0].title.contains("95 % of maxmemory"), "{}", full[0].title);
        let allkeys = run_with(Some(redis("allkeys-lru", 100, 0)), None, vec![]);
        assert_eq!(allkeys.len(), 1, "{allkeys:#?}");
        assert!(allkeys[0].title.contains("may evict idempotency records"), "{}", allkeys[0].title);
    }

    #[test]
    fn partitions_past_retention_and_a_stalled_maintenance_are_incident_5() {
        let now = unix_now();
        let day = 86_400.0;
        let part = |name: &str, ends: Option<f64>| PartitionSeen { name: name.into(), ends_unix: ends };
        let pg = |partitions: Vec<PartitionSeen>| PostgresSeen {
            database_bytes: Some(5 << 30),
            log_partitions: Some(partitions),
            ..PostgresSeen::default()
        };
        let kept =
            pg(vec![part("inference_logs_default", None), part("inference_logs_p_recent", Some(now - 29.0 * day))]);
        let metrics = |at: f64| {
            format!(
                "{QUIET}request_log_retention_days 30\nrequest_log_maintenance_last_success_timestamp_seconds {at}\n"
            )
        };
        let fresh = metrics(now - 600.0);
        assert!(run_with(None, Some(kept), vec![worker(&fresh, &fresh)]).is_empty());
        let stale =
            pg(vec![part("inference_logs_p_old", Some(now - 35.0 * day)), part("inference_logs_default", None)]);
        let findings = run_with(None, Some(stale), vec![worker(&fresh, &fresh)]);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!((findings[0].incident, findings[0].severity), (5, Severity::Warning));
        assert!(findings[0].title.contains("past the 30-day retention"), "{}", findings[0].title);
        assert!(findings[0].evidence.iter().any(|e| e.contains("inference_logs_p_old")), "{:?}", findings[0].evidence);
        assert!(findings[0].commands[0].contains("falcon log prune --older-than 30d --dry-run"));

        let overdue = metrics(now - 3.0 * 3600.0);
        let findings = run(vec![worker(&overdue, &overdue)]);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(
            findings[0].title.contains("request-log maintenance has not completed for 3 hours"),
            "{}",
            findings[0].title
        );
        // Never completed: counts from the worker's start (QUIET's start time is long ago).
        let never = metrics(0.0);
        assert_eq!(run(vec![worker(&never, &never)]).len(), 1);
    }
}
