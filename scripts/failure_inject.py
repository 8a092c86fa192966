#!/usr/bin/env python3
"""Failure-injection drills against the native stack, under a steady load, with a verdict.

    scripts/failure_inject.py DRILL [--short]      (make failure-inject-DRILL [DURATION=short])

DRILL: kill-worker, sigterm-worker, redis-down, redis-slow, postgres-down, postgres-slow,
cpu-spike, memory-growth.

Each drill: starts the native stack if it is not up (scripts/stack.sh, nginx's per-client
limit raised so the load is not refused) and a real Prometheus (Debian's) scraping the
workers every second with the shipped alert rules (deploy/prometheus/alerts, evaluated every
second); sends POST /infer through nginx at a steady rate (`falcon load --rate`) in three
phases, before / during / after the fault; injects the fault one second into "during" and
restores it when "after" starts; then prints the figures (requests, failed, p99 of each
phase, time to recover, request-log rows lost), the alerts that went pending and firing and
when, the worker log lines an operator would grep for, and PASS or FAIL against the drill's
own expectation. Exit status 0 on PASS, 1 on FAIL, 2 on a usage or set-up error.

Settings (environment): STACK_DIR (default .stack), FALCON_BIN (default
target/release/falcon, built when missing), DRILL_RATE (requests/s, default 200),
PROMETHEUS (the binary, default prometheus).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
from stackctl import ROOT, Stack, die, falcon_load, free_port, http, log_drained, metric  # noqa: E402

DRILLS = [
    "kill-worker",
    "sigterm-worker",
    "redis-down",
    "redis-slow",
    "postgres-down",
    "postgres-slow",
    "cpu-spike",
    "memory-growth",
]


class Prometheus:
    """A real Prometheus with the shipped rules, scraping and evaluating every second."""

    def __init__(self, stack: Stack) -> None:
        binary = os.environ.get("PROMETHEUS", "prometheus")
        if not shutil.which(binary):
            die("prometheus not found (scripts/ensure-test-deps.sh installs it)")
        self.dir = tempfile.mkdtemp(prefix="falcon-drill-prom.")
        self.port = free_port()
        rules = sorted(str(p) for p in (ROOT / "deploy/prometheus/alerts").glob("*.yml"))
        targets = ", ".join(f'"127.0.0.1:{p}"' for p in stack.workers)
        config = Path(self.dir) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: [{', '.join(json.dumps(r) for r in rules)}]\n"
            "scrape_configs:\n  - job_name: falcon-workers\n    scrape_timeout: 900ms\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir}/data",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while http("GET", f"http://127.0.0.1:{self.port}/-/ready")[0] != 200:
            if time.time() > deadline or self.proc.poll() is not None:
                die("Prometheus did not become ready")
            time.sleep(0.2)
        self.seen: dict[str, dict[str, float]] = {}
        self.t0 = time.time()
        self.stop_watch = threading.Event()
        self.watcher = threading.Thread(target=self.watch, daemon=True)
        self.watcher.start()

    def watch(self) -> None:
        while not self.stop_watch.is_set():
            status, text = http("GET", f"http://127.0.0.1:{self.port}/api/v1/alerts", timeout=2)
            if status == 200:
                now = time.time()
                for a in json.loads(text)["data"]["alerts"]:
                    first = self.seen.setdefault(a["labels"]["alertname"], {})
                    first.setdefault(a["state"], now)
            time.sleep(0.5)

    def query(self, expr: str) -> list:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?query={urllib.request.quote(expr)}"
        status, text = http("GET", url)
        return json.loads(text)["data"]["result"] if status == 200 else []

    def stop(self) -> None:
        self.stop_watch.set()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def rule_for_seconds() -> dict[str, float]:
    """Each shipped alert's `for:`, in seconds."""
    out, name = {}, None
    for path in sorted((ROOT / "deploy/prometheus/alerts").glob("*.yml")):
        for line in path.read_text().splitlines():
            m = re.match(r"\s*- alert:\s*(\w+)", line)
            if m:
                name = m.group(1)
            m = re.match(r"\s*for:\s*(\d+)([smh])", line)
            if m and name:
                out[name] = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
    return out


def load(stack: Stack, seconds: float, rate: float) -> dict:
    """Unique-text POST /infer through nginx at RATE/s for SECONDS (open loop)."""
    return falcon_load(stack.bin, f"127.0.0.1:{stack.nginx}", ["unique-text"], seconds, 128, rate)[0]


class Drill:
    """One fault: inject(), restore(), recovered() (None until it has), and its checks."""

    alerts: tuple[str, ...] = ()
    log_patterns: tuple[str, ...] = ()

    prom: "Prometheus"

    def __init__(self, stack: Stack, short: bool) -> None:
        self.stack, self.short = stack, short
        self.background: list[subprocess.Popen] = []

    def inject(self) -> None: ...

    def restore(self) -> None: ...

    def recovered(self) -> bool:
        return True

    def checks(self, r: dict) -> list[tuple[str, bool]]:
        return [("0 failed requests", r["failed"] == 0), ("0 rows lost", r["rows_lost"] == 0)]


class KillWorker(Drill):
    name, signal_name = "kill-worker", "kill"
    alerts = ("WorkerDown",)
    log_patterns = ("Worker listening",)

    def inject(self) -> None:
        self.before = metric(self.stack.workers[0], "inference_requests_total") or 0
        self.stack.sh(self.signal_name, "worker-1")

    def restore(self) -> None:
        self.stack.sh("start", "worker-1")
        self.baseline = metric(self.stack.workers[0], "inference_requests_total") or 0

    def recovered(self) -> bool:
        # Back in rotation: nginx sends it requests again.
        return (metric(self.stack.workers[0], "inference_requests_total") or 0) > self.baseline

    def checks(self, r: dict) -> list[tuple[str, bool]]:
        return super().checks(r) + [
            ("worker-1 back in rotation", r["recovery_s"] is not None),
            ("WorkerDown went pending (Prometheus saw it)", "pending" in r["alerts"].get("WorkerDown", {})),
        ]


class SigtermWorker(KillWorker):
    name, signal_name = "sigterm-worker", "stop"
    log_patterns = ("Shutdown signal received, draining in-flight requests", "Worker stopped", "Worker listening")


class ServiceDown(Drill):
    """The stack's own SERVICE stopped for the fault, started again to restore."""

    service = ""

    def inject(self) -> None:
        self.stack.sh("stop", self.service)

    def restore(self) -> None:
        self.stack.sh("start", self.service)


class RedisDown(ServiceDown):
    name, service = "redis-down", "redis"
    alerts = ("CircuitBreakerOpen",)
    log_patterns = ("Circuit breaker opened", "Redis unavailable", "Health probe succeeded; closing the circuit breaker")

    def recovered(self) -> bool:
        # The shared cache answers again: a text one worker answered is a hit on another.
        text = {"text": f"drill probe {time.time_ns()}"}
        a, b = self.stack.workers[0], self.stack.workers[1]
        http("POST", f"http://127.0.0.1:{a}/infer", text)
        status, body = http("POST", f"http://127.0.0.1:{b}/infer", text)
        return status == 200 and json.loads(body).get("cache_hit") is True

    def checks(self, r: dict) -> list[tuple[str, bool]]:
        back = r["recovery_s"] is not None and r["recovery_s"] <= 5
        opened = "pending" in r["alerts"].get("CircuitBreakerOpen", {})
        return super().checks(r) + [
            ("CircuitBreakerOpen went pending", opened),
            ("shared cache hits back within 5 s of Redis", back),
        ]


class RedisSlow(Drill):
    """Redis answers late: CLIENT PAUSE holds every client 400 ms, again and again (a pause
    shorter than REDIS_OPERATION_TIMEOUT_SECONDS, 0.5 s by default)."""

    name = "redis-slow"
    log_patterns = ("Redis operation timeout", "Circuit breaker opened")

    def inject(self) -> None:
        self.stop = threading.Event()

        def stall() -> None:
            while not self.stop.is_set():
                self.stack.sh("redis-cli", "CLIENT", "PAUSE", "400", "ALL", check=False)
                time.sleep(0.45)

        self.thread = threading.Thread(target=stall, daemon=True)
        self.thread.start()

    def restore(self) -> None:
        self.stop.set()
        self.thread.join()
        self.stack.sh("redis-cli", "CLIENT", "UNPAUSE", check=False)

    def checks(self, r: dict) -> list[tuple[str, bool]]:
        during = r["phases"]["during"]["p99_ms"]
        # Nothing fails: a slow cache costs at most its timeout, then the model answers.
        return super().checks(r) + [
            (f"the stall reached requests (p99 {during:.0f} ms >= 50 ms)", during >= 50),
            (f"no request waited past the Redis timeout (p99 {during:.0f} ms <= 700 ms)", during <= 700),
        ]


class PostgresDown(ServiceDown):
    name, service = "postgres-down", "postgres"
    alerts = ("CircuitBreakerOpen",)
    log_patterns = ("Database unavailable; buffering request logs", "Circuit breaker opened", "Flushed")

    def recovered(self) -> bool:
        # Every spooled row replayed.
        return all(log_drained(p) for p in self.stack.workers)

    def checks(self, r: dict) -> list[tuple[str, bool]]:
        opened = "pending" in r["alerts"].get("CircuitBreakerOpen", {})
        return super().checks(r) + [
            ("CircuitBreakerOpen went pending", opened),
            ("spool replayed", r["recovery_s"] is not None),
        ]


class PostgresSlow(Drill):
    """A lock on inference_logs held while the load runs: the writer waits, requests must not."""

    name = "postgres-slow"
    alerts = ("DatabaseOperationSlow",)
    log_patterns = ()

    def inject(self) -> None:
        self.lock = subprocess.Popen(
            [str(ROOT / "scripts/stack.sh"), "psql", "-c",
             "BEGIN; LOCK TABLE inference_logs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3600);"],
            env=self.stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def restore(self) -> None:
        os.killpg(self.lock.pid, signal.SIGTERM)
        self.lock.wait()
        self.stack.sh("psql", "-c", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE query LIKE '%pg_sleep(3600)%' AND pid <> pg_backend_pid()", check=False)

    def checks(self, r: dict) -> list[tuple[str, bool]]:
        before, during = r["phases"]["before"]["p99_ms"], r["phases"]["during"]["p99_ms"]
        # Unchanged: within twice the quiet p99 plus 5 ms of scheduling noise.
        slowed = "pending" in r["alerts"].get("DatabaseOperationSlow", {})
        return super().checks(r) + [
            ("the lock slowed the log writer (DatabaseOperationSlow pending)", slowed),
            (f"/infer p99 unchanged ({before:.2f} -> {during:.2f} ms)", during <= 2 * before + 5),
        ]


class CpuSpike(Drill):
    """Two busy loops (one per core here) compete with the workers."""

    name = "cpu-spike"

    def inject(self) -> None:
        n = os.cpu_count() or 2
        # The short form runs inside the test suite: niced, it still competes with the
        # workers without starving the suite's other tests of their timing.
        nice = ["nice", "-n", "10"] if self.short else []
        self.background = [subprocess.Popen([*nice, "sh", "-c", "while :; do :; done"]) for _ in range(n)]

    def restore(self) -> None:
        for p in self.background:
            p.kill()
            p.wait()


class MemoryGrowth(Drill):
    """worker-1 restarted with DEBUG_MEMORY_GROWTH: each request keeps memory."""

    name = "memory-growth"
    alerts = ("HighMemoryUsage",)
    log_patterns = ("DEBUG_MEMORY_GROWTH is on",)

    def inject(self) -> None:
        self.stack.sh("stop", "worker-1")
        env = dict(self.stack.env, DEBUG_MEMORY_GROWTH="true", DEBUG_MEMORY_GROWTH_MB_PER_REQUEST="1")
        self.stack.sh("start", "worker-1", env=env)

    def restore(self) -> None:
        self.peak = metric(self.stack.workers[0], "memory_usage_bytes") or 0
        port = self.stack.workers[0]
        slope = self.prom.query(f'deriv(memory_usage_bytes{{instance="127.0.0.1:{port}"}}[10s])')
        self.slope = float(slope[0]["value"][1]) if slope else 0.0
        self.stack.sh("stop", "worker-1")
        self.stack.sh("start", "worker-1")

    def checks(self, r: dict) -> list[tuple[str, bool]]:
        expr_true = self.peak > 768 * 1024 * 1024
        return super().checks(r) + [
            (f"HighMemoryUsage's expression true (peak {self.peak / 2**20:.0f} MiB > 768 MiB)", expr_true),
            (f"memory_usage_bytes shows the slope (deriv over 10 s: {self.slope / 2**20:.1f} MiB/s)", self.slope > 0),
        ]


KINDS = {d.name: d for d in (KillWorker, SigtermWorker, RedisDown, RedisSlow, PostgresDown, PostgresSlow,
                             CpuSpike, MemoryGrowth)}


def run(drill_name: str, short: bool) -> int:
    rate = float(os.environ.get("DRILL_RATE", "200"))
    before_s, during_s, after_s = (5, 15, 10) if short else (15, 75, 30)
    if drill_name == "memory-growth":
        # About a third of 200/s reaches worker-1, 1 MiB kept each: past 768 MiB in ~12 s.
        during_s = max(during_s, 20)
    stack = Stack()
    stack.up()
    prom = Prometheus(stack)
    drill = KINDS[drill_name](stack, short)
    drill.prom = prom
    try:
        rows0 = stack.settled_rows()
        started = time.time()
        phases = {"before": load(stack, before_s, rate)}
        result: dict = {}

        def during() -> None:
            result["during"] = load(stack, during_s, rate)

        t = threading.Thread(target=during)
        t.start()
        time.sleep(1)
        t_inject = time.time()
        drill.inject()
        t.join()
        phases["during"] = result["during"]
        t_restore = time.time()
        drill.restore()
        # The after phase runs while we wait for recovery.
        after: dict = {}
        t2 = threading.Thread(target=lambda: after.setdefault("r", load(stack, after_s, rate)))
        t2.start()
        recovery = None
        while time.time() - t_restore < max(after_s, 60):
            if drill.recovered():
                recovery = time.time() - t_restore
                break
            time.sleep(0.25)
        t2.join()
        phases["after"] = after["r"]
        time.sleep(2)
        prom.stop_watch.set()
        ok = sum(p["ok"] for p in phases.values())
        rows = stack.settled_rows()
        report = {
            "drill": drill_name,
            "form": "short" if short else "full",
            "rate": rate,
            "phases": phases,
            "failed": sum(p["failed"] for p in phases.values()),
            "requests": sum(p["requests"] for p in phases.values()),
            "recovery_s": recovery,
            "rows_expected": rows0 + ok,
            "rows": rows,
            # Answered requests without a row (rows of failed requests do not make up for them).
            "rows_lost": max(0, rows0 + ok - rows),
            "alerts": {
                name: {state: round(t - t_inject, 1) for state, t in states.items()}
                for name, states in prom.seen.items()
            },
        }
        lines = [
            line
            for line in stack.log_lines(started)
            if any(p in line.get("message", "") for p in drill.log_patterns)
        ]
        checks = drill.checks(report)
        # The detect step: an expected alert that went pending fires `for` later (plus a scrape
        # and an evaluation, 1 s each here), not later: nothing resets its timer mid-fault.
        fault_s = t_restore - t_inject
        holds = rule_for_seconds()
        for name in drill.alerts:
            states = report["alerts"].get(name, {})
            hold = holds.get(name)
            if hold is None or "pending" not in states or states["pending"] + hold + 3 > fault_s:
                continue
            fired = states.get("firing")
            late = None if fired is None else fired - states["pending"] - hold
            what = f"{name} fired {hold:.0f} s (its for) after pending" + (
                "" if late is None else f", {late:+.1f} s off"
            )
            checks.append((what, fired is not None and late <= 2.5))
        print(f"== drill {drill_name} ({report['form']}): {rate:.0f} req/s through nginx, fault at +1 s of 'during' ==")
        print(f"{'phase':<8} {'seconds':>8} {'requests':>9} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8}")
        for name, p in phases.items():
            print(f"{name:<8} {p['duration_s']:>8.1f} {p['requests']:>9} {p['failed']:>7} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f}")
        rec = "not within 60 s" if recovery is None else f"{recovery:.2f} s after the restore"
        print(f"recovered: {rec}; fault lasted {t_restore - t_inject:.1f} s")
        print(f"request-log rows: {rows} of {rows0 + ok} expected, lost {report['rows_lost']}")
        print("alerts (seconds after the fault; Prometheus scraping and evaluating every 1 s, shipped rules):")
        if not report["alerts"]:
            print("  none")
        for name, states in sorted(report["alerts"].items()):
            expected = " (expected)" if name in drill.alerts else ""
            print(f"  {name}: " + ", ".join(f"{s} at {v:+.1f} s" for s, v in sorted(states.items(), key=lambda x: x[1])) + expected)
        for name in drill.alerts:
            if name not in report["alerts"]:
                print(f"  {name}: did not go pending (its expression stayed false)")
        print(f"log lines an operator would grep for ({', '.join(drill.log_patterns) or 'none'}): {len(lines)}")
        for line in lines[:5]:
            print("  " + json.dumps({k: line.get(k) for k in ("timestamp", "level", "worker_id", "message") if k in line}))
        passed = all(ok for _, ok in checks)
        for what, ok in checks:
            print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        print(f"VERDICT: {'PASS' if passed else 'FAIL'}")
        out = os.environ.get("DRILL_REPORT")
        if out:
            Path(out).write_text(json.dumps(dict(report, checks=checks, passed=passed), indent=2))
        return 0 if passed else 1
    finally:
        for p in drill.background:
            if p.poll() is None:
                p.kill()
        prom.stop()
        stack.down()


def main() -> None:
    if "--list" in sys.argv:
        print("\n".join(DRILLS))
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    short = "--short" in sys.argv or os.environ.get("DURATION") == "short"
    if len(args) != 1 or args[0] not in KINDS:
        die(f"usage: failure_inject.py DRILL [--short] | --list; DRILL is one of {', '.join(DRILLS)}")
    sys.exit(run(args[0], short))


if __name__ == "__main__":
    main()
