"""The text benchmark's bookkeeping: fidelity figures, which paths count, the board queries, latency mode."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchContext  # noqa: E402
from bench.text_embed import (  # noqa: E402
    alternate,
    board_title_queries,
    fastest_at_fidelity,
    latency_mode,
    path_figures,
    top10_overlap,
)


def test_top10_overlap_is_the_mean_shared_share():
    a = np.array([list(range(10)), list(range(10))])
    b = np.array([[0, 1, 2, 3, 4, 20, 21, 22, 23, 24], list(range(9, -1, -1))])  # 5 shared; all 10, reordered
    assert top10_overlap(a, b) == pytest.approx(0.75)


def test_fastest_at_fidelity_skips_faster_paths_below_the_bar():
    figures = {"st-torch-fp32": {"side": "peer", "texts_per_s": 100, "overlap": 1.0},
               "st-int8": {"side": "peer", "texts_per_s": 400, "overlap": 0.80},
               "st-bf16": {"side": "peer", "texts_per_s": 250, "overlap": 0.96},
               "ours-int8": {"side": "ours", "texts_per_s": 900, "overlap": 0.94},
               "torch-fp32": {"side": "ours", "texts_per_s": 300, "overlap": 1.0}}
    assert fastest_at_fidelity(figures, "peer", 0.95) == "st-bf16"
    assert fastest_at_fidelity(figures, "ours", 0.95) == "torch-fp32"
    assert fastest_at_fidelity(figures, "ours", 0.90) == "ours-int8"


def test_alternate_interleaves_then_appends_the_tail():
    assert alternate(["a", "b", "c"], ["x"]) == ["a", "x", "b", "c"]
    assert alternate(["a"], ["x", "y"]) == ["a", "x", "y"]


def test_path_figures_compare_each_side_with_its_own_fp32_path():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((40, 8)).astype(np.float32)
    queries = corpus[:20] + 0.01 * rng.standard_normal((20, 8)).astype(np.float32)  # query i finds pin i first
    relevant = [np.array([i]) for i in range(20)]
    exact, shuffled = (queries, corpus), (queries, corpus[rng.permutation(40)])
    times = {"st-torch-fp32": [2.0, 2.0], "st-fast": [1.0, 1.0], "torch-fp32": [4.0, 4.0], "ours-fast": [1.0, 0.5]}
    vectors = {"st-torch-fp32": exact, "st-fast": shuffled, "torch-fp32": shuffled, "ours-fast": shuffled}
    figures = path_figures(times, vectors, relevant, ["torch-fp32", "ours-fast"], n_texts=100)
    assert figures["st-torch-fp32"]["recall@10"] == 1.0 and figures["st-fast"]["overlap"] < 0.5
    assert figures["ours-fast"]["overlap"] == 1.0  # same ranking as our own fp32 path, however poor
    assert figures["ours-fast"]["texts_per_s"] == pytest.approx(100 / 0.75)  # median of 1.0 and 0.5 s
    assert [f["side"] for f in figures.values()] == ["peer", "peer", "ours", "ours"]


def test_board_title_queries_pool_boards_of_one_title(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"pin_id": ["p0", "p1", "p2", "p3", "p4"],
                             "title": ["cat", "dog", "horse", "", "blue sky"]}), data / "pins.parquet")
    pq.write_table(pa.table({"pin_id": ["p0", "p1", "p1", "p2", "p4", "p4", "p3"],
                             "board_title": ["animals", "animals", "animals", "animals", "sky", "blue sky", "sky"],
                             "board_kind": ["category", "category", "keyword", "keyword", "subgroup", "concept",
                                            "subgroup"]}), data / "boards.parquet")
    queries, corpus, relevant, _ = board_title_queries(BenchContext(out=tmp_path, demo_run=tmp_path), 10, 10)
    assert corpus == ["cat", "dog", "horse", "blue sky"]  # p3 has no title
    assert queries == ["animals", "sky"]  # the concept board "blue sky" is its pin's own name: left out
    assert [r.tolist() for r in relevant] == [[0, 1, 2], [3]]


def test_latency_mode_runs_the_same_graph_one_request_at_a_time():
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from pinclip.config import load_config
    from pinclip.models.fast import FastTextEncoder
    from pinclip.models.pinclip import PinCLIP

    model = PinCLIP(load_config(preset="tiny").model).eval()
    texts = ["red apple", "a small grey cat sleeping on a warm windowsill", "dog", "keycap: #", "blue sky"]
    encoder = FastTextEncoder(model, backend="openvino", precision="int8", batch_size=2, calibration_texts=texts)
    latency = latency_mode(encoder)
    assert latency.runner.requests == 1 and latency.runner.compiled.get_property("PERFORMANCE_HINT") == "LATENCY"
    assert encoder.runner.compiled.get_property("PERFORMANCE_HINT") == "THROUGHPUT"  # the original is untouched
    assert np.abs(latency.embed(texts, field="queries") - encoder.embed(texts, field="queries")).max() < 1e-5


def test_board_title_queries_without_demo_data_pair_synthetic_texts(tmp_path):
    queries, corpus, relevant, source = board_title_queries(BenchContext(out=tmp_path, demo_run=tmp_path), 5, 8)
    assert len(queries) == len(corpus) == 5 and "synthetic" in source
    assert [r.tolist() for r in relevant] == [[i] for i in range(5)]  # each keyword list finds its own title
