"""The ANN benchmark's pieces (bench/ann_*.py): data generator, statistics, operating points, int8 queries,
chunked builds under a time budget, and each peer's search against exact search."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ann_data import LowRankMixture, embedding_stats  # noqa: E402
from bench.ann_peers import add_within, operating_point, symmetric_int8  # noqa: E402
from pinclip.serve.ann_tuning import exact_top_k, recall_at_k  # noqa: E402


def test_mixture_gives_unit_vectors_and_queries_across_a_modality_gap():
    mixture = LowRankMixture(dim=32, rank=8, clusters=5)
    rng = np.random.default_rng(0)
    base, queries = mixture.base(400, rng), mixture.queries(300, rng)
    assert base.shape == (400, 32) and queries.shape == (300, 32)
    assert np.allclose(np.linalg.norm(base, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)
    assert (base @ mixture.mean_dir).mean() > 0 > (queries @ mixture.mean_dir).mean()  # opposite cones


def test_embedding_stats_by_hand():
    # two pins e1, e2 and one query e1: means (0.5, 0.5) and (1, 0); top-2 scores 1, 0
    base = np.array([[1.0, 0.0], [0.0, 1.0]])
    queries = np.array([[1.0, 0.0]])
    s = embedding_stats(base, queries, np.array([[1.0, 0.0]]))
    assert s["mean_norm_base"] == pytest.approx(np.sqrt(0.5)) and s["mean_norm_query"] == pytest.approx(1.0)
    assert s["mean_cos"] == pytest.approx(np.sqrt(0.5))
    assert s["base_pair_cos"] == pytest.approx(0.0)
    # covariance of the pins [[.5, -.5], [-.5, .5]]: one eigenvalue, effective dim 1; the query's
    # scores (1, 0) have mean 0.5 and std sqrt(0.5) (sample covariance), so contrast = (0 - 0.5) / sqrt(0.5)
    assert s["effective_dim"] == pytest.approx(1.0)
    assert s["top1"] == 1.0 and s["top10"] == 0.0
    assert s["contrast"] == pytest.approx(-0.5 / np.sqrt(0.5))


def test_operating_point_is_the_smallest_parameter_reaching_the_recall():
    curve = [{"param": 8, "recall": 0.97}, {"param": 2, "recall": 0.90}, {"param": 4, "recall": 0.95}]
    assert operating_point(curve, 0.95)["param"] == 4
    assert operating_point(curve, 0.99) is None


def test_symmetric_int8_keeps_the_order_of_inner_products_with_codes():
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    q8 = symmetric_int8(queries)
    assert q8.dtype == np.int8 and np.abs(q8).max(axis=1).tolist() == [127] * 20
    codes = rng.integers(-128, 128, (500, 64)).astype(np.int8)
    exact = exact_top_k(queries, codes.astype(np.float32), 10)
    rounded = exact_top_k(q8.astype(np.float32), codes.astype(np.float32), 10)
    assert recall_at_k(rounded, exact) >= 0.9  # rounding the query to 255 levels moves few neighbours


def test_inner_products_with_codes_order_pins_as_the_dequantized_vectors_do():
    from pinclip.quant import dequantize, fit_global_affine, quantize

    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    quant = fit_global_affine(x)
    codes, queries = quantize(x, quant), rng.standard_normal((10, 32))
    # <q, s(c - z)> = s<q, c> - s z sum(q): the same order over pins for each query
    assert (np.argsort(queries @ codes.T.astype(np.float64), axis=1)
            == np.argsort(queries @ dequantize(codes, quant).T.astype(np.float64), axis=1)).all()


def test_add_within_adds_whole_chunks_until_the_budget_is_spent():
    added: list[tuple[int, int]] = []
    assert add_within(lambda lo, hi: added.append((lo, hi)), 25, budget_s=float("inf"), chunk=10) == 25
    assert added == [(0, 10), (10, 20), (20, 25)]
    added.clear()
    assert add_within(lambda lo, hi: added.append((lo, hi)), 25, budget_s=0.0, chunk=10) == 10  # first chunk only
    assert added == [(0, 10)]


@pytest.mark.parametrize("peer", ["usearch", "hnswlib"])
def test_peer_search_agrees_with_exact_search(peer):
    pytest.importorskip(peer)
    from bench.ann_peers import hnswlib_contender, usearch_contender
    from pinclip.quant import dequantize, fit_global_affine, quantize

    rng = np.random.default_rng(3)
    mixture = LowRankMixture(dim=64, rank=16, clusters=20)
    x = mixture.base(2000, rng)
    quant = fit_global_affine(x)
    codes = quantize(x, quant)
    vectors, queries = dequantize(codes, quant), mixture.queries(50, rng)
    contender = usearch_contender(codes, 1) if peer == "usearch" else hnswlib_contender(vectors, 1)
    contender.set_param(256)
    assert contender.n == 2000
    assert recall_at_k(contender.search(queries, 1), exact_top_k(queries, vectors, 10)) >= 0.95
