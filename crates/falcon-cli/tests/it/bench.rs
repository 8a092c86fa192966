//! `make bench`'s report (scripts/bench.py) in its smoke form against the debug build: every
//! section runs (floor, embedded and Redis + Postgres workers, the nginx stack, the k6
//! spike, perf_analyzer against Falcon and MLServer), and the report holds what the README promises: ratios to the floor measured in
//! the same run, rows = requests, a Markdown table and a PNG chart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use crate::common::repo;

#[test]
fn make_bench_writes_its_json_table_and_chart_with_every_section() {
    let falcon = Path::new(env!("CARGO_BIN_EXE_falcon"));
    // cargo test builds the package's examples next to its binaries.
    let floor = falcon.parent().unwrap().join("examples/floor");
    assert!(floor.exists(), "{} is missing (cargo test builds the examples)", floor.display());
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join(".tools/venv/bin/python"))
        .arg(repo().join("scripts/bench.py"))
        .env("BENCH_QUICK", "1")
        .env("BENCH_OUT", out_dir.path())
        .env("FALCON_BIN", falcon)
        .env("FLOOR_BIN", &floor)
        .env_remove("STACK_DIR")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bench.py failed:\n{text}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("results.json")).unwrap()).unwrap();
    let rows = report["scenarios"].as_array().unwrap();
    let find = |config: &str, scenario: &str| {
        rows.iter()
            .find(|r| r["config"] == config && r["scenario"] == scenario)
            .unwrap_or_else(|| panic!("no {config} {scenario} row: {report}"))
    };
    for (config, scenario) in [
        ("floor", "healthz"),
        ("floor", "same-text"),
        ("floor", "unique-text"),
        ("embedded", "healthz"),
        ("embedded", "same-text"),
        ("embedded", "unique-text"),
        ("redis+postgres", "same-text"),
        ("redis+postgres", "unique-text"),
        ("nginx + 3 workers", "same-text"),
        ("nginx + 3 workers", "unique-text"),
    ] {
        let row = find(config, scenario);
        let rps = row["rps"].as_f64().unwrap();
        assert!(rps > 0.0, "{row}");
        assert_eq!(row["failed"], 0, "{row}");
        // The ratio is to the floor's figure for the same request in this run.
        let floor_rps = find("floor", scenario)["rps"].as_f64().unwrap();
        assert!((row["ratio"].as_f64().unwrap() - rps / floor_rps).abs() < 1e-9, "{row}");
        assert!(row["p99_ms"].as_f64().unwrap() >= row["p50_ms"].as_f64().unwrap(), "{row}");
    }
    assert_eq!(find("embedded", "unique-text")["target"], 0.55);
    // Where the CPU went: each process group that served a row spent some per request.
    for (config, groups) in [
        ("embedded", &["server", "load generator"][..]),
        ("redis+postgres", &["server", "redis", "postgres", "load generator"][..]),
        ("nginx + 3 workers", &["server", "nginx", "redis", "postgres", "load generator"][..]),
    ] {
        let cpu = &find(config, "unique-text")["cpu_us_per_request"];
        for group in groups {
            assert!(cpu[group].as_f64().unwrap() > 0.0, "{config}: no CPU for {group}: {cpu}");
        }
    }
    // Nothing lost: every request made to a logging worker is a row, none dropped.
    for name in ["embedded", "redis+postgres", "nginx + 3 workers"] {
        let log = &report["request_log"][name];
        assert!(log["requests"].as_u64().unwrap() > 0, "{name}: {log}");
        assert_eq!(log["rows"], log["requests"], "{name}: {log}");
        assert_eq!(log["dropped"], 0, "{name}: {log}");
    }
    // CPU per request at fixed offered rates, for the floor and the embedded worker.
    let curve = report["cpu_vs_load"].as_array().unwrap();
    assert_eq!(curve.len(), 4, "{curve:?}");
    assert!(curve.iter().all(|c| c["cpu_us_per_request"].as_f64().unwrap() > 0.0), "{curve:?}");
    // The same rates from k6's constant-arrival-rate executor, a second client.
    let k6 = report["cpu_vs_load_k6"].as_array().unwrap();
    assert_eq!(k6.len(), 4, "{k6:?}");
    for c in k6 {
        assert!(c["requests"].as_u64().unwrap() > 0 && c["cpu_us_per_request"].as_f64().unwrap() > 0.0, "{c}");
        assert!(c["p99_ms"].as_f64().unwrap() > 0.0, "{c}");
    }
    // RSS of a fresh worker with the cache off, after its unique-text load, with the target.
    let off = &report["rss_cache_off_mb"];
    assert!(off["after"].as_f64().unwrap() > 1.0 && off["requests"].as_u64().unwrap() > 0, "{off}");
    assert_eq!(off["target"], 40.0, "{off}");
    // Storage per request, measured: Postgres bytes per row, Redis bytes per key.
    let storage = &report["storage"];
    assert!(storage["postgres_bytes_per_row"].as_u64().unwrap() > 50, "{storage}");
    assert!(storage["redis_keys"].as_u64().unwrap() > 100, "{storage}");
    assert!(storage["redis_bytes_per_key"].as_u64().unwrap() > 50, "{storage}");
    assert!(report["rss_mb"]["idle"].as_f64().unwrap() > 1.0, "{}", report["rss_mb"]);
    // Idle CPU of both workers, measured (not asserted: a figure, with its target).
    let idle = &report["idle_cpu"];
    for name in ["embedded", "redis+postgres"] {
        assert!(idle["percent"][name].as_f64().is_some_and(|p| p >= 0.0), "{idle}");
    }
    assert_eq!(idle["target_percent"], 0.1, "{idle}");
    assert_eq!(report["rss_mb"]["stack_workers_after_load"].as_array().unwrap().len(), 3);
    // The spike: second by second, with the users k6 ran, and no failed request.
    let spike = &report["spike"];
    let timeline = spike["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 5, "{spike}");
    assert_eq!(spike["failed"], 0, "{spike}");
    let users = timeline.iter().filter_map(|p| p["users"].as_f64()).fold(0.0, f64::max);
    assert!(users > 100.0, "the spike never reached its users: {spike}");

    // The peer: perf_analyzer at 1, 8 and 32 against Falcon (JSON and binary tensors) and
    // MLServer, each with its own CPU per request (counted by the server) and RSS.
    let peer = report["peer"]["rows"].as_array().unwrap();
    for server in ["falcon", "falcon (binary tensors)", "mlserver"] {
        for concurrency in [1, 8, 32] {
            let row = peer
                .iter()
                .find(|r| r["server"] == server && r["concurrency"] == concurrency)
                .unwrap_or_else(|| panic!("no {server} c={concurrency} row: {peer:?}"));
            for field in ["infer_per_s", "cpu_us_per_request", "rss_mb", "requests", "throughput_vs_mlserver"] {
                assert!(row[field].as_f64().unwrap() > 0.0, "{field}: {row}");
            }
            assert!(row["p99_us"].as_u64().unwrap() >= row["p50_us"].as_u64().unwrap(), "{row}");
        }
    }

    let table = std::fs::read_to_string(out_dir.path().join("results.md")).unwrap();
    assert!(table.contains("| mlserver | 32 |"), "{table}");
    assert!(table.contains("Idle CPU over 3 s with every background task on"), "{table}");
    assert!(table.contains("| embedded | unique-text |"), "{table}");
    assert!(table.contains("| nginx + 3 workers | same-text |"), "{table}");
    assert!(table.contains("| request log | requests | rows | dropped |"), "{table}");
    // Each fixed-rate ratio with its target, from both clients.
    for client in ["falcon load", "k6"] {
        for rate in ["2,000/s", "8,000/s"] {
            assert!(table.contains(&format!("| {client} | {rate} | ")), "{client} {rate}: {table}");
        }
    }
    assert!(table.contains("with the cache off"), "{table}");
    let png = std::fs::read(out_dir.path().join("results.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "results.png is not a PNG");
    // Width and height from the IHDR chunk: a real three-panel chart, not an empty image.
    let (w, h) =
        (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert!(w >= 800 && h >= 1200 && png.len() > 30_000, "{w}×{h}, {} bytes", png.len());
}
