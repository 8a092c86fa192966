//! The doctor's answer: a table and the findings for people (coloured on a terminal), or
//! one JSON document for machines.

use std::fmt::Write as _;

use serde::Serialize;

use super::diagnose::{Finding, Severity, WorkerStats, human_bytes};
use super::gather::{HttpAnswer, PostgresSeen, RedisSeen, Seen};
use super::playbook::Shape;

#[derive(Serialize)]
pub struct Report<'a> {
    pub status: &'static str,
    pub exit_code: u8,
    pub deployment: Shape,
    pub window_seconds: f64,
    pub workers: &'a [WorkerStats],
    pub load_balancer: Option<LoadBalancer<'a>>,
    pub redis: Option<&'a RedisSeen>,
    pub postgres: Option<&'a PostgresSeen>,
    pub findings: &'a [Finding],
}

#[derive(Serialize)]
pub struct LoadBalancer<'a> {
    pub url: &'a str,
    pub health: &'a HttpAnswer,
}

impl<'a> Report<'a> {
    pub fn new(seen: &'a Seen, stats: &'a [WorkerStats], findings: &'a [Finding], deployment: Shape) -> Self {
        let worst = findings.iter().map(|f| f.severity).max();
        let (status, exit_code) = match worst {
            None => ("healthy", 0),
            Some(Severity::Warning) => ("warning", 1),
            Some(Severity::Critical) => ("critical", 2),
        };
        let window_seconds = seen.workers.iter().map(|w| w.window.as_secs_f64()).fold(0.0, f64::max);
        Report {
            status,
            exit_code,
            deployment,
            window_seconds,
            workers: stats,
            load_balancer: seen.balancer.as_ref().map(|(url, health)| LoadBalancer { url, health }),
            redis: seen.redis.as_ref(),
            postgres: seen.postgres.as_ref(),
            findings,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn text(&self, colour: bool) -> String {
        let paint =
            |code: &str, text: &str| if colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "falcon doctor: {} worker(s), {:.1} s between scrapes, deployment {}",
            self.workers.len(),
            self.window_seconds,
            serde_json::to_value(self.deployment).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<12} {:<7} {:<7} {:>8} {:>8} {:>7} {:>9} {:>6} {:>10} {:>10}  BREAKERS",
            "WORKER", "ALIVE", "READY", "UPTIME", "REQ/S", "ERR%", "P95", "HIT%", "MEMORY", "SPOOL"
        );
        for w in self.workers {
            let alive = if w.alive { paint("32", "yes    ") } else { paint("31", "no     ") };
            let ready = match w.ready {
                Some(true) => paint("32", "yes    "),
                Some(false) if w.draining => paint("33", "drain  "),
                Some(false) => paint("31", "no     "),
                None => "-      ".to_owned(),
            };
            let breakers: Vec<String> = w
                .breakers
                .iter()
                .map(|(d, s)| {
                    let state = match *s as i64 {
                        0 => "closed",
                        1 => "open",
                        _ => "half-open",
                    };
                    format!("{d}={state}")
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<12} {alive} {ready} {:>8} {:>8} {:>7} {:>9} {:>6} {:>10} {:>10}  {}",
                w.name,
                opt(w.uptime_seconds, human_seconds),
                opt(w.requests_per_second, |v| format!("{v:.1}")),
                opt(w.server_error_rate, |v| format!("{:.2}", v * 100.0)),
                opt(w.p95_seconds, |v| format!("{:.1}ms", v * 1e3)),
                opt(w.cache_hit_rate, |v| format!("{:.0}", v * 100.0)),
                opt(w.memory_bytes, human_bytes),
                opt(w.spool_bytes, human_bytes),
                breakers.join(" ")
            );
        }
        if let Some(lb) = &self.load_balancer {
            let state = match lb.health.status {
                Some(200) => paint("32", "up"),
                _ => paint("31", "down"),
            };
            let _ = writeln!(out, "{:<12} {state}  {}", "nginx", lb.url);
        }
        if let Some(r) = self.redis {
            match &r.error {
                Some(e) => {
                    let _ = writeln!(out, "{:<12} {}  {}: {e}", "redis", paint("31", "down"), r.url);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<12} {}  {}: PING {} ms, used_memory {}, maxmemory-policy {}, slowlog {}",
                        "redis",
                        paint("32", "up"),
                        r.url,
                        opt(r.ping_ms, |v| format!("{v:.1}")),
                        opt(r.used_memory.map(|v| v as f64), human_bytes),
                        r.maxmemory_policy.as_deref().unwrap_or("-"),
                        opt(r.slowlog_len.map(|v| v as f64), |v| format!("{v:.0}")),
                    );
                }
            }
        }
        if let Some(p) = self.postgres {
            match &p.error {
                Some(e) => {
                    let _ = writeln!(out, "{:<12} {}  {}: {e}", "postgres", paint("31", "down"), p.url);
                }
                None => {
                    let states: Vec<String> = p.connections_by_state.iter().map(|(s, n)| format!("{s} {n}")).collect();
                    let _ = writeln!(
                        out,
                        "{:<12} {}  {}: connections [{}] of {}, queries > 5 s: {}, rows in the last minute: {}",
                        "postgres",
                        paint("32", "up"),
                        p.url,
                        states.join(", "),
                        opt(p.max_connections.map(|v| v as f64), |v| format!("{v:.0}")),
                        p.long_queries.len(),
                        p.rows_last_minute.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    );
                }
            }
        }
        let (agreed, disagreed) =
            self.workers.iter().fold((0.0, 0.0), |(a, d), w| (a + w.shadow_agreed, d + w.shadow_disagreed));
        if agreed + disagreed > 0.0 {
            let _ = writeln!(
                out,
                "{:<12} agreement {:.1} % with the live model over {:.0} sampled texts",
                "shadow",
                agreed / (agreed + disagreed) * 100.0,
                agreed + disagreed
            );
        }
        let _ = writeln!(out);
        if self.findings.is_empty() {
            let _ = writeln!(out, "{}\n", paint("32", "No findings."));
        }
        for f in self.findings {
            let badge = match f.severity {
                Severity::Critical => paint("1;31", "CRITICAL"),
                Severity::Warning => paint("1;33", "WARNING "),
            };
            let _ = writeln!(out, "{badge} Incident #{} ({}): {}", f.incident, f.incident_name, f.title);
            let _ = writeln!(out, "  cause:    {}", f.cause);
            for e in &f.evidence {
                let _ = writeln!(out, "  evidence: {e}");
            }
            for c in &f.commands {
                let _ = writeln!(out, "  run:      {}", paint("36", c));
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "status: {} (exit {})", self.status, self.exit_code);
        out
    }
}

fn human_seconds(s: f64) -> String {
    if s >= 86_400.0 {
        format!("{:.1}d", s / 86_400.0)
    } else if s >= 3_600.0 {
        format!("{:.1}h", s / 3_600.0)
    } else if s >= 60.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{s:.0}s")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}
