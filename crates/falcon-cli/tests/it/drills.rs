//! The failure-injection drills (scripts/failure_inject.py, `make failure-inject-*`), short
//! forms, one after the other against one native stack: each prints PASS with its figures
//! and a JSON report, and the report's alerts come from a real Prometheus.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use crate::common::repo;
use crate::common::stack::Stack;

/// Every drill the script has (`failure_inject.py --list`): a drill added there is run here.
fn drills() -> Vec<String> {
    let out = Command::new(repo().join("scripts/failure_inject.py")).arg("--list").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let drills: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert!(drills.len() >= 8, "{drills:?}");
    drills
}

#[test]
fn every_failure_drill_passes_its_short_form() {
    let stack = Stack::up_with(&[("STACK_NGINX_RATE", "100000r/s"), ("STACK_NGINX_BURST", "100000")]);
    let reports = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    for drill in drills() {
        let report = reports.path().join(format!("{drill}.json"));
        let out = Command::new(repo().join("scripts/failure_inject.py"))
            .arg(&drill)
            .arg("--short")
            .env("STACK_DIR", &stack.ctl.dir)
            .env("DRILL_REPORT", &report)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("{text}");
        if !out.status.success() || !text.contains("VERDICT: PASS") {
            failed.push(drill.clone());
            continue;
        }
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["failed"], 0, "{drill}: {r}");
        assert_eq!(r["rows_lost"], 0, "{drill}: {r}");
        assert!(r["requests"].as_u64().unwrap() > 1000, "{drill}: {r}");
    }
    assert!(failed.is_empty(), "drills that failed: {failed:?} (their output is above)");
    // The expected alerts of the outages went at least pending in Prometheus.
    for (drill, alert) in
        [("kill-worker", "WorkerDown"), ("redis-down", "CircuitBreakerOpen"), ("memory-growth", "HighMemoryUsage")]
    {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(reports.path().join(format!("{drill}.json"))).unwrap()).unwrap();
        assert!(r["alerts"][alert]["pending"].is_number(), "{drill}: {alert} never went pending: {}", r["alerts"]);
    }
}
