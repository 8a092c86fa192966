//! The k6 load scenarios (tests/load/*.js), short forms, through nginx of a native stack,
//! via `make load-test`'s script: each gives a PASS verdict, a JSON summary and k6's HTML
//! report, and the stack lost nothing (a row per answered request).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use crate::common::repo;
use crate::common::stack::Stack;

#[test]
fn every_load_scenario_passes_its_short_form_through_nginx() {
    // The stack's nginx per-client limit raised, as make load-test does: the test measures
    // the workers, not the limit (the report says which limit applied).
    let stack = Stack::up_with(&[("STACK_NGINX_RATE", "100000r/s"), ("STACK_NGINX_BURST", "100000")]);
    let results = tempfile::tempdir().unwrap();
    let mut total = 0.0;
    for scenario in ["baseline", "spike", "stress", "soak"] {
        let out = Command::new(repo().join("scripts/load-test.sh"))
            .env("SCENARIO", scenario)
            .env("STACK", "native")
            .env("DURATION", "short")
            .env("STACK_DIR", &stack.ctl.dir)
            .env("RESULTS_DIR", results.path())
            // The debug build on a machine shared with the rest of the suite: the latency
            // threshold is loosened, failed requests and bad bodies still fail the verdict.
            .env("P95_MS", "3000")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{scenario}:\n{text}");
        assert!(text.contains("VERDICT: PASS"), "{scenario}:\n{text}");
        // Not one request failed: no 409 from a reused idempotency key, no 429 from nginx,
        // no 502/503 while users arrive.
        assert!(text.contains("non-200 answers by status: none"), "{scenario}:\n{text}");
        assert!(text.contains("nginx per-client limit: 100000r/s"), "{scenario}: the report names the limit:\n{text}");
        let files: Vec<String> = std::fs::read_dir(results.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with(&format!("{scenario}-")))
            .collect();
        let json = files.iter().find(|n| n.ends_with(".json")).expect("a JSON summary");
        assert!(files.iter().any(|n| n.ends_with(".html")), "{scenario}: k6's HTML report: {files:?}");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(results.path().join(json)).unwrap()).unwrap();
        let requests = summary["metrics"]["http_reqs"]["values"]["count"].as_f64().unwrap_or(0.0);
        assert!(requests > 100.0, "{scenario}: {requests} requests");
        total += requests;
        eprintln!(
            "{scenario}: {}",
            text.lines()
                .filter(|l| l.starts_with("requests") || l.starts_with("latency"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    // Every request made a row: the request log lost nothing under the load.
    let rows = stack.settled_rows();
    assert_eq!(rows as f64, total, "request-log rows vs requests sent");
}
