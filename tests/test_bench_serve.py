"""The open-loop load test's bookkeeping: k6 samples, p99 with its support, sustained rates, the comparison."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.open_loop import LoadPoint, clients_for, rate_at_bound, read_samples, summary, sustained  # noqa: E402
from bench.serve_load import compare  # noqa: E402

K6_CSV = """metric_name,timestamp,metric_value,check,error,error_code,expected_response,group,method,name,proto,scenario,service,status,subproto,tls_version,url,extra_tags,metadata
http_reqs,1796618425,1.000000,,,,,,,,,,,200,,,,,
from_schedule,1796618425,12.500000,,,,,,,,,,,200,,,,,
start_lag,1796618425,0.000000,,,,,,,,,,,,,,,,
from_schedule,1796618425,30.000000,,,,,,,,,,,503,,,,,
start_lag,1796618425,1.000000,,,,,,,,,,,,,,,,
from_schedule,1796618426,7.250000,,,,,,,,,,,200,,,,,
dropped_iterations,1796618426,2.000000,,,,,,,,,,,,,,,,
iteration_duration,1796618426,7.300000,,,,,,,,,,,,,,,,
"""


def test_read_samples_keeps_2xx_latencies_and_counts_errors_and_drops(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text(K6_CSV)
    point = read_samples(path, LoadPoint(offered_rps=100, seconds=1))
    assert point.latencies_ms == [12.5, 7.25]  # the 503 is an error, not a latency
    assert (point.errors, point.dropped, point.start_lag_ms) == (1, 2, [0.0, 1.0])


def test_summary_p99_and_the_samples_beyond_it():
    point = LoadPoint(offered_rps=50, seconds=2, latencies_ms=[float(i) for i in range(1, 101)])  # 1..100 ms
    row = summary(point)
    assert row["samples"] == 100 and row["answered_rps"] == 50
    assert row["p50_ms"] == pytest.approx(50.5) and row["p99_ms"] == pytest.approx(99.01)
    assert row["beyond_p99"] == 1  # only the 100 ms sample lies beyond
    assert summary(LoadPoint(10, 1))["p99_ms"] is None


def row(offered, p99, errors=0, dropped=0, answered=None):
    return {"offered_rps": offered, "answered_rps": offered if answered is None else answered, "p99_ms": p99,
            "errors": errors, "dropped": dropped}


def test_sustained_needs_the_bound_no_failures_and_the_offered_rate():
    assert sustained(row(100, 80), 100)
    assert not sustained(row(100, 120), 100)
    assert not sustained(row(100, 80, errors=1), 100)
    assert not sustained(row(100, 80, dropped=1), 100)
    assert not sustained(row(100, 80, answered=90), 100)  # answers fell behind the schedule
    assert not sustained(row(100, None), 100)


def test_rate_at_bound_is_the_highest_sustained_rate():
    curve = [row(100, 20), row(200, 40), row(300, 90), row(400, 150), row(450, 60, dropped=5)]
    assert rate_at_bound(curve, 100) == 300
    assert rate_at_bound(curve, 50) == 200
    assert rate_at_bound(curve, 10) == 0


def test_clients_cover_one_second_of_requests():
    assert clients_for(250) == 250 and clients_for(3) == 16


def test_compare_best_of_each_and_per_runtime():
    servers = {"PinCLIP, ONNX Runtime": {"curve": [row(100, 20), row(300, 90)]},
               "PinCLIP, torch": {"curve": [row(100, 40), row(200, 95)]},
               "Infinity, ONNX Runtime": {"curve": [row(120, 30), row(250, 99)]},
               "Infinity, torch": {"curve": [row(150, 150)]}}
    assert compare(servers, None, 100) == ("1.20x (PinCLIP, ONNX Runtime 300 vs Infinity, ONNX Runtime 250 req/s)", True)
    assert compare(servers, "torch", 100) == ("PinCLIP, torch 200 req/s; Infinity, torch sustained no rate", True)
    assert compare(servers, None, 25) == ("PinCLIP, ONNX Runtime 100 req/s; Infinity sustained no rate", True)
    assert compare({k: v for k, v in servers.items() if k.startswith("PinCLIP")}, None, 100)[1] is None
