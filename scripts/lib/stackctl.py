"""Shared by the operational scripts (failure_inject.py, bench.py): the native stack
(scripts/stack.sh) driven from Python, a worker's metrics, free ports, plain HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PROG = Path(sys.argv[0]).stem.replace("_", "-")


def die(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, ""


def metric(port: int, name: str, labels: str = "") -> float | None:
    """The sum of every series of NAME (whose labels contain LABELS) a worker exposes."""
    status, text = http("GET", f"http://127.0.0.1:{port}/metrics", timeout=2)
    if status != 200:
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def log_drained(port: int) -> bool:
    """A worker's request log has nothing left to write: its buffer and its spool are empty."""
    return (metric(port, "log_buffer_size") or 0) == 0 and (metric(port, "log_spool_bytes") or 0) == 0


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def process_tree(pid: int) -> list[int]:
    """PID and its descendants (a Postgres postmaster and its backends, nginx and its workers)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_by_pid(roots: list[int]) -> dict[int, float]:
    """User + system CPU seconds (all threads) of ROOTS and their descendants, by process."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in (p for root in roots for p in process_tree(root)):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def falcon_load(
    binary: str, addr: str, scenarios: list[str], seconds: float, connections: int, rate: float | None = None
) -> list[dict]:
    """One `falcon load` run of SCENARIOS, SECONDS each, no warm-up, closed loop or at a fixed
    offered RATE in all; its JSON reports, one per scenario."""
    r = subprocess.run(
        [binary, "load", "--addr", addr, "--connections", str(connections), "--duration", str(seconds),
         "--warmup", "0", "--rounds", "1", "--scenario", *scenarios, *(["--rate", str(rate)] if rate else [])],
        capture_output=True, text=True,
    )
    reports = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    if len(reports) != len(scenarios):
        die(f"falcon load against {addr} failed:\n{r.stdout}{r.stderr}")
    return reports


class Stack:
    """The native stack: scripts/stack.sh with this STACK_DIR."""

    def __init__(self) -> None:
        self.dir = Path(os.environ.get("STACK_DIR", ROOT / ".stack")).resolve()
        self.started = False
        self.env = dict(os.environ, STACK_DIR=str(self.dir))

    def sh(self, *args: str, env: dict | None = None, check: bool = True) -> str:
        r = subprocess.run(
            [str(ROOT / "scripts/stack.sh"), *args], env=env or self.env, capture_output=True, text=True
        )
        if check and r.returncode != 0:
            die(f"stack.sh {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return r.stdout + r.stderr

    def up(self) -> None:
        if subprocess.run([str(ROOT / "scripts/stack.sh"), "status"], env=self.env, capture_output=True).returncode != 0:
            print(f"{PROG}: starting the native stack (nginx per-client limit raised to 100000r/s)")
            env = dict(self.env, STACK_NGINX_RATE="100000r/s", STACK_NGINX_BURST="100000")
            self.sh("up", env=env)
            self.started = True
        conf = {}
        for line in (self.dir / "stack.env").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                conf[k] = v.strip('"')
        self.nginx = int(conf["STACK_NGINX_PORT"])
        self.workers = [int(p) for p in conf["STACK_WORKER_PORTS"].split()]
        self.bin = conf["FALCON_BIN"]

    def rows(self) -> int:
        out = self.sh("psql", "-tAc", "SELECT count(*) FROM inference_logs").strip().splitlines()
        return int(out[-1]) if out and out[-1].isdigit() else -1

    def settled_rows(self, within: float = 90) -> int:
        """The row count once every worker's buffer and spool are empty and it stopped changing.
        Raises if that does not happen WITHIN seconds: a count taken while rows are still on
        their way would undercount a start and hide lost rows at the end."""
        deadline, last, idle = time.time() + within, -2, False
        while time.time() < deadline:
            idle = all(log_drained(p) for p in self.workers)
            n = self.rows()
            if idle and n == last:
                return n
            last = n
            time.sleep(1)
        raise RuntimeError(
            f"the request log did not settle within {within:.0f} s: {last} rows, "
            f"{'every' if idle else 'not every'} worker's buffer and spool empty"
        )

    def log_lines(self, since: float) -> list[dict]:
        """The workers' JSON log lines from SINCE (a Unix time) on."""
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
        lines = []
        for i in (1, 2, 3):
            path = self.dir / f"worker-{i}.log"
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                try:
                    v = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if str(v.get("timestamp", "")) >= start:
                    lines.append(v)
        return lines

    def down(self) -> None:
        if self.started:
            self.sh("down", check=False)
