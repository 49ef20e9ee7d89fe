"""The benchmark harness (bench/): timing helpers, report rendering, data generators, the runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import demo_stages  # noqa: E402
from bench.common import (  # noqa: E402
    BenchContext,
    BenchResult,
    Target,
    interleaved_times,
    median,
    paired_ratio,
    percentile,
)
from bench.graph_walk import power_law_graph  # noqa: E402
from bench.quant_quality import stored  # noqa: E402
from bench.report import markdown_table, render  # noqa: E402
from bench.search_scale import SphereMixture, recall10  # noqa: E402
from bench.stub_server import StubEmbedder  # noqa: E402


def test_median_percentile_and_paired_ratio():
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5
    assert percentile([0.0, 10.0, 20.0, 30.0, 40.0], 75) == 30.0
    # per-round ratios baseline/candidate: 4/2 = 2, 9/3 = 3, 2/2 = 1 -> median 2
    times = {"base": [4.0, 9.0, 2.0], "fast": [2.0, 3.0, 2.0]}
    assert paired_ratio(times, "base", "fast") == 2.0


def test_interleaved_times_runs_round_robin():
    order: list[str] = []
    times = interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2, warmup=1)
    assert order == ["a", "b", "a", "b", "a", "b"]  # one warm-up round, then two timed rounds
    assert len(times["a"]) == len(times["b"]) == 2


def test_markdown_table_hand_written():
    lines = markdown_table([{"x": 1, "y": "a|b"}, {"x": 2, "z": "c"}])
    assert lines == ["| x | y | z |", "|---|---|---|", "| 1 | a\\|b |  |", "| 2 |  | c |"]


def test_render_marks_met_and_missed():
    machine = {"date": "2026-11-24", "cpu": "AMD EPYC", "cores": 2, "torch": "2.13", "torch_threads": 2,
               "avx512_bf16": True, "load_average_1m": 0.1, "busy_processes": []}
    results = {"train_mfu": BenchResult("train_mfu", "Training", [Target("MFU", ">= 40%", "30%", False)]),
               "text_embed": BenchResult("text_embed", "Text", [Target("speed", ">= 1.5x", "2x", True)])}
    text = render(results, machine, quick=False)
    assert "| Training | MFU | >= 40% | 30% | **missed** |" in text
    assert "| Text | speed | >= 1.5x | 2x | met |" in text
    assert text.index("## Training") < text.index("## Text")  # the order, not insertion order


def test_demo_stages_complete_partial_absent(tmp_path):
    ctx = BenchContext(out=tmp_path, demo_run=tmp_path)
    assert demo_stages.run(ctx).targets[0].met is None  # no timings.json
    (tmp_path / "timings.json").write_text(json.dumps({"data": 60, "train": 600, "eval": 200, "embed": 100,
                                                       "index": 40}))
    result = demo_stages.run(ctx)
    assert result.targets[0].met is True and result.figures["total_s"] == 1000.0
    (tmp_path / "timings.json").write_text(json.dumps({"data": 0.0, "train": 1500}))
    partial = demo_stages.run(ctx)
    assert partial.targets[0].met is None and partial.figures["skipped"] == ["data"]
    assert "eval" in partial.figures["missing"]
    stages = {"data": 20, "features": 60, "train": 500, "eval": 60, "embed": 80, "index": 0.5}
    (tmp_path / "timings.json").write_text(json.dumps({"stages": stages, "skipped": []}))
    current = demo_stages.run(ctx)  # the current format: a sub-second index stage is not a skip
    assert current.targets[0].met is True and current.figures["total_s"] == 720.5
    (tmp_path / "timings.json").write_text(json.dumps({"stages": stages, "skipped": ["data"]}))
    assert demo_stages.run(ctx).targets[0].met is None


def test_sphere_mixture_and_recall():
    x = SphereMixture(dim=8, clusters=3, spread=0.5).sample(50, np.random.default_rng(0))
    assert x.shape == (50, 8) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    found = np.array([[1, 2, 3], [4, 5, 6]])
    truth = np.array([[3, 2, 9], [7, 8, 9]])  # 2 of 3, then 0 of 3
    assert recall10(found, truth) == pytest.approx(1 / 3)


def test_power_law_graph_is_a_valid_csr():
    graph = power_law_graph(pins=200, boards=20, edges=1000)
    assert 0 < graph.num_edges <= 1060
    assert graph.pin_indptr[-1] == graph.board_indptr[-1] == graph.num_edges
    sizes = np.sort(graph.board_degree())[::-1]
    assert sizes[0] > 3 * np.median(sizes)  # Zipf: the largest board dwarfs the median one


def test_stub_embedder_maps_query_names_to_rows():
    queries = np.arange(12, dtype=np.float32).reshape(4, 3)
    stub = StubEmbedder(queries, "v1", None)
    assert stub.embed_texts(["q2", "q5", "hello"]).tolist() == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


def test_binary_scheme_scores_d_minus_twice_hamming():
    a = np.array([[0.5, -1.0, 2.0, -0.1]], np.float32)
    b = np.array([[0.3, 1.0, 1.0, -2.0]], np.float32)
    sa, sb = stored("binary", a, {}), stored("binary", b, {})
    assert sa.tolist() == [[1, -1, 1, -1]]
    assert float((sa @ sb.T)[0, 0]) == 4 - 2 * 1  # signs differ in one of 4 dims
    assert np.array_equal(stored("fp32", a, {}), a)


def test_runner_writes_results(tmp_path):
    (tmp_path / "timings.json").write_text(json.dumps({"data": 30, "train": 300, "eval": 100, "embed": 50,
                                                       "index": 20}))
    proc = subprocess.run([sys.executable, "bench/run.py", "--out", str(tmp_path / "out"), "--only", "demo_stages",
                           "--demo-run", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["machine"]["cores"] >= 1 and "date" in payload["machine"]
    assert payload["results"]["demo_stages"]["figures"]["total_s"] == 500.0
    assert "| demo wall time (all stages) | <= 20 min | 8.3 min | met |" in (tmp_path / "out" / "results.md").read_text()


def test_older_checkpoint_config_drops_only_unset_unknown_keys():
    from bench.common import _drop_unset_unknown
    from pinclip.config import Config

    dropped: list[str] = []
    old = {"model": {"backbone": {"name": "minilm", "gone_option": 0}}, "train": {"steps": 5}}
    assert _drop_unset_unknown(old, Config(), "", dropped) == {"model": {"backbone": {"name": "minilm"}},
                                                               "train": {"steps": 5}}
    assert dropped == ["model.backbone.gone_option"]
    with pytest.raises(ValueError, match="gone_option"):
        _drop_unset_unknown({"model": {"gone_option": 4}}, Config(), "", [])
