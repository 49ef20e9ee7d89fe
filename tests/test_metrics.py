"""Tests for pinclip.eval.metrics: exact top-k (with ragged exclusions), true Recall@K / hit rate, and the
per-query metrics (recall with its ceiling, nDCG@10, MRR) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from pinclip.eval.metrics import exact_topk, per_query_metrics, recall_at_k, retrieval_metrics

# Scores of 4 queries (rows) against 4 corpus items (columns); the corpus is the identity.
SCORES = np.array(
    [
        [0.9, 0.1, 0.3, 0.2],  # relevant {0}: rank 1
        [0.8, 0.2, 0.7, 0.1],  # relevant {2}: rank 2
        [0.1, 0.2, 0.3, 0.4],  # relevant {1, 3}: ranks 3 and 1
        [0.5, 0.6, 0.4, 0.3],  # relevant {3}: rank 4
    ],
    dtype=np.float32,
)
RELEVANT = [np.array([0]), np.array([2]), np.array([1, 3]), np.array([3])]


def test_hand_computed_4x4_recall_and_hit_rate():
    m = retrieval_metrics(SCORES, np.eye(4, dtype=np.float32), RELEVANT, ks=(1, 2, 4))
    assert m["queries"] == 4 and m["queries_without_relevant"] == 0
    assert m["recall@1"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert m["hit@1"] == pytest.approx(2 / 4)
    assert m["recall@2"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert m["hit@2"] == pytest.approx(3 / 4)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["hit@4"] == pytest.approx(1.0)


def test_exact_topk_orders_by_score():
    scores, ids = exact_topk(SCORES, np.eye(4, dtype=np.float32), k=3)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids.tolist() == [[0, 2, 3], [0, 2, 1], [3, 2, 1], [1, 0, 2]]
    np.testing.assert_allclose(scores[1], [0.8, 0.7, 0.2])


def test_recall_is_true_recall_when_more_relevant_than_k():
    ids = np.array([[4, 0, 1, 2, 3]])
    m = recall_at_k(ids, [np.array([0, 1, 2])], ks=(1, 2, 3, 5))
    assert m["recall@1"] == 0.0 and m["hit@1"] == 0.0
    assert m["recall@2"] == pytest.approx(1 / 3) and m["hit@2"] == 1.0
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["recall@5"] == pytest.approx(1.0)


def test_queries_without_relevant_items_are_excluded_and_counted():
    ids = np.array([[0, 1], [1, 0], [0, 1]])
    m = recall_at_k(ids, [np.array([0]), np.array([], dtype=np.int64), np.array([1])], ks=(1,))
    assert m["queries"] == 2 and m["queries_without_relevant"] == 1
    assert m["recall@1"] == pytest.approx(0.5) and m["hit@1"] == pytest.approx(0.5)
    empty = recall_at_k(ids[:1], [np.array([], dtype=np.int64)], ks=(1,))
    assert empty["queries"] == 0 and np.isnan(empty["recall@1"])


def test_exclude_self_and_padding_when_corpus_is_small():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    scores, ids = exact_topk(x, x, k=3, exclude=np.array([0, 1, 2]))
    assert ids.tolist() == [[1, 2, -1], [0, 2, -1], [1, 0, -1]]
    assert np.isneginf(scores[:, 2]).all()
    _, ids = exact_topk(x, x, k=2, exclude=np.array([-1, 1, -1]))  # negative: nothing excluded
    assert ids.tolist() == [[0, 1], [0, 2], [2, 1]]
    _, ids = exact_topk(x[:1], x[:2], k=4)
    assert ids.tolist() == [[0, 1, -1, -1]]


def _brute_force(queries, corpus, relevant, ks, exclude):
    """Per query: sort every corpus item by (-score, id) in pure Python, then count."""
    recalls = {k: [] for k in ks}
    hits = {k: [] for k in ks}
    for qi, query in enumerate(queries.tolist()):
        if len(relevant[qi]) == 0:
            continue
        scored = [
            (-sum(a * b for a, b in zip(query, item)), ci)
            for ci, item in enumerate(corpus.tolist())
            if ci != exclude[qi]
        ]
        ranking = [ci for _, ci in sorted(scored)]
        rel = set(relevant[qi].tolist())
        for k in ks:
            found = len(rel & set(ranking[:k]))
            recalls[k].append(found / len(rel))
            hits[k].append(found > 0)
    return {f"recall@{k}": np.mean(recalls[k]) for k in ks} | {f"hit@{k}": np.mean(hits[k]) for k in ks}


def test_agrees_with_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((40, 12)).astype(np.float32)
    corpus = rng.standard_normal((150, 12)).astype(np.float32)
    relevant = [rng.choice(150, size=rng.integers(0, 12), replace=False) for _ in range(40)]
    exclude = rng.integers(0, 150, size=40)
    ks = (1, 5, 20)
    reference = _brute_force(queries, corpus, relevant, ks, exclude)
    # chunk=17 splits both queries and corpus into blocks, exercising the running top-k merge
    _, ids = exact_topk(queries, corpus, k=20, exclude=exclude, chunk=17)
    m = recall_at_k(ids, relevant, ks)
    for key, value in reference.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    full_ids = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :5]  # no exclusion
    np.testing.assert_array_equal(exact_topk(queries, corpus, k=5, chunk=17)[1], full_ids)


def test_bad_shapes_and_k_are_errors():
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="corpus"):
        exact_topk(x, np.zeros((2, 4)), k=1)
    with pytest.raises(ValueError, match="exclude"):
        exact_topk(x, x, k=1, exclude=np.array([0]))
    with pytest.raises(ValueError, match="NaN"):
        exact_topk(np.full((1, 3), np.nan), x, k=1)
    with pytest.raises(ValueError, match="k="):
        recall_at_k(np.zeros((2, 5), dtype=np.int64), [np.array([0])] * 2, ks=(10,))


def test_per_query_metrics_on_the_4x4_case_by_hand():
    """Relevant items at ranks 1 | 2 | 1 and 3 | 4 (see SCORES); ranked to depth 10 with -1 padding."""
    _, ids = exact_topk(SCORES, np.eye(4, dtype=np.float32), k=10)
    assert ids[:, :4].tolist() == [[0, 2, 3, 1], [0, 2, 1, 3], [3, 2, 1, 0], [1, 0, 2, 3]] and (ids[:, 4:] == -1).all()
    m = per_query_metrics(ids, RELEVANT, ks=(1, 2, 10))
    assert m["rows"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(m["recall@1"], [1, 0, 0.5, 0])
    np.testing.assert_allclose(m["ceiling@1"], [1, 1, 0.5, 1])  # two relevant items: one in the top 1 at best
    np.testing.assert_allclose(m["hit@1"], [1, 0, 1, 0])
    np.testing.assert_allclose(m["recall@2"], [1, 1, 0.5, 0])
    np.testing.assert_allclose(m["ceiling@2"], [1, 1, 1, 1])
    np.testing.assert_allclose(m["recall@10"], [1, 1, 1, 1])
    ndcg = [1.0, 1 / np.log2(3), (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)), 1 / np.log2(5)]  # binary gains
    np.testing.assert_allclose(m["ndcg@10"], ndcg)
    np.testing.assert_allclose(m["mrr"], [1, 1 / 2, 1, 1 / 4])


def test_per_query_metrics_ceiling_misses_and_queries_without_relevant():
    ids = np.array([list(range(10)), list(range(10)), [20, 21, 22, 23, 24, -1, -1, -1, -1, -1]])
    relevant = [np.arange(12), np.array([], np.int64), np.array([5])]
    m = per_query_metrics(ids, relevant, ks=(5, 10))
    assert m["rows"].tolist() == [0, 2]  # the query without relevant items is left out
    np.testing.assert_allclose(m["recall@10"], [10 / 12, 0])
    np.testing.assert_allclose(m["ceiling@10"], [10 / 12, 1])
    np.testing.assert_allclose(m["recall@5"], [5 / 12, 0])
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 0.0])  # 10 of 12 relevant in the top 10 is the best possible
    np.testing.assert_allclose(m["mrr"], [1.0, 0.0])  # nothing relevant within the ranked depth: 0
    with pytest.raises(ValueError, match="deeper"):
        per_query_metrics(ids[:, :5], relevant, ks=(10,))


def test_exact_topk_with_ragged_exclusions_by_hand():
    exclude = [np.array([0, 2]), np.array([], np.int64), np.array([3, -1]), np.array([0, 1, 2, 3])]
    scores, ids = exact_topk(SCORES, np.eye(4, dtype=np.float32), k=3, exclude=exclude)
    assert ids.tolist() == [[3, 1, -1], [0, 2, 1], [2, 1, 0], [-1, -1, -1]]
    np.testing.assert_allclose(scores[0, :2], [0.2, 0.1])
    assert np.isneginf(scores[0, 2]) and np.isneginf(scores[3]).all()
    _, chunked = exact_topk(SCORES, np.eye(4, dtype=np.float32), k=3, exclude=exclude, chunk=1)
    np.testing.assert_array_equal(chunked, ids)  # exclusions land in the right block
    with pytest.raises(ValueError, match="one entry per query"):
        exact_topk(SCORES, np.eye(4, dtype=np.float32), k=3, exclude=exclude[:3])


def test_one_relevant_set_per_query_is_required_and_metrics_are_floats():
    ids = np.array([[0, 1, 2], [2, 1, 0]])
    for metric in (per_query_metrics, recall_at_k):
        with pytest.raises(ValueError, match="one relevant set per query"):
            metric(ids, [np.array([0])], ks=(1,))
    with pytest.raises(ValueError, match="one relevant set per query"):
        recall_at_k(np.array([0, 1, 2]), [np.array([0])] * 3, ks=(1,))
    values = per_query_metrics(ids, [np.array([1]), np.array([0, 2])], ks=(1, 2), ndcg_k=2)
    assert values["hit@1"].dtype == np.float64 and values["hit@1"].tolist() == [0.0, 1.0]
    nothing = recall_at_k(ids, [np.array([], np.int64)] * 2, ks=(1, 3))
    assert set(nothing) == {"queries", "queries_without_relevant", "recall@1", "hit@1", "recall@3", "hit@3"}
    assert nothing["queries"] == 0 and nothing["queries_without_relevant"] == 2 and np.isnan(nothing["hit@3"])


def test_retrieval_metrics_pass_the_exclusions_on():
    x = np.eye(3, dtype=np.float32)
    x[1, 0] = 0.5  # query 0's nearest other item is 1
    relevant = [np.array([1]), np.array([0]), np.array([0])]
    assert retrieval_metrics(x, x, relevant, ks=(1,))["recall@1"] == 0.0  # each query finds itself first
    assert retrieval_metrics(x, x, relevant, ks=(1,), exclude=np.arange(3))["recall@1"] == 1.0  # ties: lower id


def test_exact_topk_equals_a_full_sort_at_every_k():
    x = np.random.default_rng(3).standard_normal((3, 300)).astype(np.float32)
    order = np.argsort(-x, axis=1, kind="stable")  # scores against the identity corpus are x itself
    for k in range(1, 301):
        np.testing.assert_array_equal(exact_topk(x, np.eye(300, dtype=np.float32), k)[1], order[:, :k], err_msg=k)


def test_scores_are_float32_and_exclusions_come_in_every_documented_form():
    # 1 and 1 + 1e-9 are one float32 number: a tie, broken by the lower id
    _, ids = exact_topk(np.array([[1.0]]), np.array([[1.0], [1.0 + 1e-9]]), k=2)
    assert ids.tolist() == [[0, 1]]
    _, ids = exact_topk(np.array([[1.0, 1.0 + 1e-9]]), np.eye(2), k=2)  # the query is float32 too
    assert ids.tolist() == [[0, 1]]
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    expected = [[2, -1], [0, -1], [1, -1]]  # each query: itself and one more left out
    for exclude in (np.array([[0, 1], [1, 2], [2, 0]]), [[0, 1], [1, 2], [2, 0]],
                    np.array([np.array([0, 1]), np.array([1, 2]), np.array([2, 0])], dtype=object)):
        assert exact_topk(x, x, k=2, exclude=exclude)[1].tolist() == expected
    assert exact_topk(x, x, k=1, exclude=[0, 1, 2])[1].tolist() == [[1], [0], [1]]  # a list of single ids
    assert exact_topk(x, x, k=1, exclude=np.array([0.0, 1.0, 2.0]))[1].tolist() == [[1], [0], [1]]  # cast to ids
    assert exact_topk(x, x, k=2, exclude=[[0.0, 1.0], [1.0, 2.0], [2.0, 0.0]])[1].tolist() == expected
    with pytest.raises(ValueError, match="must be"):
        exact_topk(np.zeros(2), x, k=1)
    scores, ids = exact_topk(np.zeros((0, 2)), x, k=2, exclude=[])
    assert scores.shape == ids.shape == (0, 2)


def test_no_relevant_items_at_all_gives_empty_integer_rows():
    values = per_query_metrics(np.array([[0, 1]]), [np.array([], np.int64)], ks=(1,), ndcg_k=1)
    assert values["rows"].dtype == np.int64 and len(values["rows"]) == 0 and len(values["recall@1"]) == 0


def test_rows_with_fewer_eligible_items_than_k_are_padded_with_minus_inf():
    """The padding of a short row is id -1 with score -inf (never NaN or a stale score), with or without exclusions."""
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    scores, ids = exact_topk(x, x, k=4)
    assert ids.tolist() == [[0, 1, -1, -1], [1, 0, -1, -1]]
    np.testing.assert_array_equal(scores[:, :2], [[1.0, 0.0], [1.0, 0.0]])
    assert np.isneginf(scores[:, 2:]).all()
    scores, ids = exact_topk(x, x, k=3, exclude=np.array([1, -1]), chunk=1)
    assert ids.tolist() == [[0, -1, -1], [1, 0, -1]]
    assert np.isneginf(scores[0, 1:]).all() and np.isneginf(scores[1, 2])


def test_ragged_exclusions_in_a_one_dimensional_object_array():
    """A ragged object array (one array of ids per query, as a dataframe column gives them) is the ragged form."""
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    exclude = np.empty(3, dtype=object)
    exclude[:] = [np.array([0, 1]), np.array([1]), np.array([], np.int64)]
    assert exclude.ndim == 1
    assert exact_topk(x, x, k=2, exclude=exclude)[1].tolist() == [[2, -1], [0, 2], [2, 1]]
