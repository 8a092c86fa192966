"""`make bench`'s peer section: NVIDIA's perf_analyzer (Triton's own load tool) against
Falcon's Open Inference Protocol route and against MLServer, the peer, in the same run, on
the same cores, one server at a time.

- Falcon: a release worker with embedded defaults and the cache off (every request reaches
  the model and writes a request-log row).
- MLServer 1.7.1 (pinned in .tools/mlserver with uvloop 0.21.0, which it needs) serving a
  scikit-learn TF-IDF(1-2) + logistic-regression pipeline trained on the same VADER split
  (scripts/peer/train.py, scripts/peer/runtime.py), with its default settings.

Both get the same distinct texts (no cache can answer) as JSON tensors (MLServer does not
have the binary tensor data extension); Falcon is also measured with perf_analyzer's default,
binary tensors. Per concurrency: infer/s, p50 and p99 (perf_analyzer's), CPU µs a request
(the server's whole process tree, from /proc, over every request it answered during the run,
counted by its own metrics) and RSS after the run (the tree's sum).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from pathlib import Path

from stackctl import ROOT, cpu_by_pid, die, free_port, http, metric, process_tree, rss_mb

PERF_ANALYZER = ROOT / ".tools/perf_analyzer/perf_analyzer"
MLSERVER = ROOT / ".tools/mlserver/bin/mlserver"
CONCURRENCY = [1, 8, 32]


def ensure_tools() -> None:
    """perf_analyzer and MLServer, pinned, into .tools (once)."""
    subprocess.run([ROOT / "scripts/install-perf-analyzer.sh"], check=True)
    subprocess.run([ROOT / "scripts/install-mlserver.sh"], check=True)


def texts_file(path: Path, n: int) -> None:
    """N distinct texts for perf_analyzer's --input-data: VADER's sentences, each numbered."""
    sentences = []
    for source in sorted((ROOT / "data/vader").glob("*_GroundTruth.txt")):
        for line in source.read_bytes().decode("utf-8", "replace").splitlines():
            parts = line.rstrip("\r").split("\t", 2)
            if len(parts) == 3:
                sentences.append(parts[2])
    data = [{"text": [f"{sentences[i % len(sentences)]} #{i}"]} for i in range(n)]
    path.write_text(json.dumps({"data": data}))


def tree_rss_mb(pid: int) -> float:
    return round(sum(rss_mb(p) for p in process_tree(pid)), 1)


def perf_analyzer(addr: str, texts: Path, concurrency: int, interval_ms: int, json_tensors: bool, out: Path) -> dict:
    """One perf_analyzer run; its CSV row (infer/s, p50 and p99 in µs)."""
    argv = [str(PERF_ANALYZER), "-m", "sentiment", "-u", addr, "-i", "http", "--input-data", str(texts),
            "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
            # Three windows, averaged, whatever their spread: a shared machine's windows
            # rarely agree within perf_analyzer's default 10 %, and then it reports nothing.
            "--max-trials", "3", "--stability-percentage", "999", "-f", str(out)]
    if json_tensors:
        argv += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0 or not out.exists():
        die(f"perf_analyzer against {addr} failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    row = next(csv.DictReader(out.open()))
    return {"infer_per_s": float(row["Inferences/Second"]), "p50_us": int(row["p50 latency"]),
            "p99_us": int(row["p99 latency"])}


def measure(name: str, pid: int, addr: str, answered, texts: Path, interval_ms: int, json_tensors: bool,
            tmp: Path) -> list[dict]:
    """perf_analyzer at each concurrency against one server; CPU per request over the run."""
    rows = []
    for c in CONCURRENCY:
        before_cpu, before_n = sum(cpu_by_pid([pid]).values()), answered()
        row = perf_analyzer(addr, texts, c, interval_ms, json_tensors, tmp / f"{name}-{c}.csv")
        spent = sum(cpu_by_pid([pid]).values()) - before_cpu
        n = answered() - before_n
        row.update(server=name, concurrency=c, requests=int(n), rss_mb=tree_rss_mb(pid),
                   cpu_us_per_request=round(spent / max(n, 1) * 1e6, 1))
        print(f"bench:   {name} c={c}: {row['infer_per_s']:,.0f} infer/s, {row['cpu_us_per_request']} µs CPU a request",
              flush=True)
        rows.append(row)
    return rows


def start_mlserver(tmp: Path) -> tuple[subprocess.Popen, int, int]:
    """MLServer with the peer model, its HTTP and metrics ports; waits until the model is
    ready."""
    models = tmp / "mlserver"
    trained = subprocess.run([ROOT / ".tools/mlserver/bin/python", ROOT / "scripts/peer/train.py", models],
                             capture_output=True, text=True, check=True)
    (models / "sentiment/runtime.py").write_text((ROOT / "scripts/peer/runtime.py").read_text())
    port = free_port()
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()}
    (models / "settings.json").write_text(json.dumps(settings))
    log = (tmp / "mlserver.log").open("w")
    proc = subprocess.Popen([MLSERVER, "start", models], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    while http("GET", f"http://127.0.0.1:{port}/v2/models/sentiment/ready")[0] != 200:
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            die(f"MLServer did not start:\n{(tmp / 'mlserver.log').read_text()[-3000:]}")
        time.sleep(0.5)
    print(f"bench:   MLServer's model: {trained.stdout.strip()}", flush=True)
    return proc, port, settings["metrics_port"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def peer_section(tmp: Path, report: dict, worker, quick: bool) -> None:
    """Section 4: perf_analyzer against Falcon and MLServer. `worker(name, tmp, **env)`
    starts a release Falcon worker (bench.py's)."""
    ensure_tools()
    texts = tmp / "perf-texts.json"
    texts_file(texts, 5_000 if quick else 200_000)
    interval = 1000 if quick else 3000
    rows = []
    falcon = worker("perf-analyzer", tmp, CACHE_ENABLED="false")
    try:
        answered = lambda: metric(falcon.port, "inference_requests_total") or 0  # noqa: E731
        rows += measure("falcon", falcon.proc.pid, falcon.addr, answered, texts, interval, True, tmp)
        rows += measure("falcon (binary tensors)", falcon.proc.pid, falcon.addr, answered, texts, interval, False, tmp)
    finally:
        falcon.stop()
    proc, http_port, metrics_port = start_mlserver(tmp)
    try:
        answered = lambda: metric(metrics_port, "model_infer_request_success_total") or 0  # noqa: E731
        rows += measure("mlserver", proc.pid, f"127.0.0.1:{http_port}", answered, texts, interval, True, tmp)
    finally:
        stop(proc)
    for row in rows:
        peer = next(r for r in rows if r["server"] == "mlserver" and r["concurrency"] == row["concurrency"])
        row["throughput_vs_mlserver"] = round(row["infer_per_s"] / max(peer["infer_per_s"], 1e-9), 2)
        row["cpu_vs_mlserver"] = round(row["cpu_us_per_request"] / max(peer["cpu_us_per_request"], 1e-9), 3)
    report["peer"] = {"tool": "perf_analyzer 2.41.0", "texts": 5_000 if quick else 200_000,
                      "measurement_interval_ms": interval, "rows": rows}


def markdown(peer: dict) -> list[str]:
    lines = ["", f"Triton's load tool against Falcon's OIP route and MLServer 1.7.1, the peer ({peer['tool']}, "
             f"{peer['texts']:,} distinct texts, JSON tensors unless said; one server at a time on the same cores; "
             "CPU of each server's whole process tree):", "",
             "| server | concurrency | infer/s | p50 µs | p99 µs | CPU µs a request | RSS MB | throughput × MLServer | CPU ÷ MLServer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in peer["rows"]:
        lines.append(f"| {r['server']} | {r['concurrency']} | {r['infer_per_s']:,.0f} | {r['p50_us']:,} | {r['p99_us']:,} | "
                     f"{r['cpu_us_per_request']:,.1f} | {r['rss_mb']} | {r['throughput_vs_mlserver']:g} | "
                     f"{r['cpu_vs_mlserver']:g} |")
    return lines


if __name__ == "__main__":
    # `python3 scripts/lib/peer.py`: this section alone (bench.py's worker, a temp dir).
    import sys
    import tempfile

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench  # noqa: E402

    with tempfile.TemporaryDirectory(prefix="falcon-peer-") as d:
        out: dict = {}
        peer_section(Path(d), out, bench.worker, os.environ.get("BENCH_QUICK") == "1")
        print("\n".join(markdown(out["peer"])))
