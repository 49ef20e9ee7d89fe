"""pinclip.eval.stats: bootstrap intervals, paired differences and seed summaries on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from pinclip.eval.stats import (
    MIN_QUERIES,
    bootstrap_ci,
    bootstrap_replicates,
    holm,
    holm_significant,
    p_value,
    paired_difference,
    seed_summary,
)


def test_a_constant_vector_has_a_zero_width_interval():
    assert bootstrap_ci([0.3] * 50) == pytest.approx((0.3, 0.3))
    assert bootstrap_ci([1.0]) == (1.0, 1.0)


def test_two_values_resample_to_means_0_half_and_1():
    """Resampling [0, 1] gives means 0, 0.5, 1 with chances 1/4, 1/2, 1/4: the 2.5% tail is 0, the 97.5% is 1."""
    lo, hi = bootstrap_ci([0.0, 1.0])
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = bootstrap_ci([0.0, 1.0], level=0.2)  # the middle 20% of the resampled means is all 0.5
    assert (lo, hi) == (0.5, 0.5)


def test_a_large_normal_sample_gives_mean_plus_minus_1_96_standard_errors():
    x = np.random.default_rng(3).normal(0.4, 0.2, size=4000)
    half = 1.96 * x.std() / np.sqrt(len(x))  # 0.0062
    lo, hi = bootstrap_ci(x, n_boot=4000)
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_is_seeded_and_empty_is_nan():
    x = np.random.default_rng(0).random(30)
    assert bootstrap_ci(x, seed=1) == bootstrap_ci(x, seed=1) != bootstrap_ci(x, seed=2)
    assert all(np.isnan(bootstrap_ci([])))


def test_paired_difference_sees_a_small_gain_that_unpaired_intervals_miss():
    """Query difficulty varies a lot; model a is better by 0.02 on every query."""
    b = np.random.default_rng(0).random(200)
    a = b + 0.02
    a_lo, a_hi = bootstrap_ci(a)
    b_lo, b_hi = bootstrap_ci(b)
    assert a_lo < b_hi  # the two intervals overlap ...
    d = paired_difference(a, b)
    assert d["diff"] == pytest.approx(0.02) and d["low"] == pytest.approx(0.02) and d["high"] == pytest.approx(0.02)
    assert d["significant"] and d["queries"] == 200  # ... but on the same queries the gain is certain
    assert d["relative"] == pytest.approx(0.02 / b.mean())


def test_paired_difference_of_equal_models_and_of_noise_is_not_significant():
    b = np.random.default_rng(1).random(100)
    same = paired_difference(b, b)
    assert same["diff"] == 0.0 and (same["low"], same["high"]) == (0.0, 0.0) and not same["significant"]
    flip = np.where(np.arange(100) % 2 == 0, 0.1, -0.1)  # +0.1 on half the queries, -0.1 on the other half
    noisy = paired_difference(b + flip, b)
    assert noisy["diff"] == pytest.approx(0.0) and noisy["low"] < 0 < noisy["high"] and not noisy["significant"]


def test_fewer_than_min_queries_are_never_significant():
    worse = paired_difference(np.zeros(MIN_QUERIES - 1), np.ones(MIN_QUERIES - 1))
    assert worse["diff"] == -1.0 and worse["high"] == -1.0 and not worse["significant"]
    assert paired_difference(np.zeros(MIN_QUERIES), np.ones(MIN_QUERIES))["significant"]


def test_paired_values_must_cover_the_same_queries():
    with pytest.raises(ValueError, match="same queries"):
        paired_difference([1.0, 0.0], [1.0])


def test_seed_summary_averages_each_query_over_seeds():
    per_seed = [np.array([1.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0])]  # seed means 2/3 and 1/3
    s = seed_summary(per_seed)
    assert s["mean"] == pytest.approx(0.5) and s["seeds"] == 2
    assert s["seed_std"] == pytest.approx(np.sqrt(2 * (1 / 6) ** 2))  # std (ddof 1) of 2/3 and 1/3
    one = seed_summary([np.array([0.2, 0.4])])
    assert one["mean"] == pytest.approx(0.3) and one["seed_std"] == 0.0 and one["seeds"] == 1
    # one seed, every query its own cluster: the ordinary bootstrap over queries (the same draws)
    assert (one["low"], one["high"]) == pytest.approx(bootstrap_ci([0.2, 0.4]))


def test_seeds_are_resampled_too():
    """Seed 0 scores 0 on every query, seed 1 scores 1. Averaging per query first gives 0.5 everywhere and a
    zero-width interval; drawing two seeds with replacement gives 0, 0.5, 1 with chances 1/4, 1/2, 1/4."""
    per_seed = [np.zeros(30), np.ones(30)]
    s = seed_summary(per_seed)
    assert s["mean"] == 0.5 and (s["low"], s["high"]) == (0.0, 1.0)
    assert bootstrap_ci(np.mean(per_seed, axis=0)) == (0.5, 0.5)


def test_cluster_bootstrap_is_wider_than_iid_when_queries_repeat_their_cluster():
    """10 clusters (held-out boards) of 10 identical queries each: there are 10 independent values, not 100.
    Resampling clusters is the bootstrap of the 10 cluster values (the same draws); the i.i.d. bootstrap of
    the 100 queries is about sqrt(10) times too narrow."""
    cluster_values = np.random.default_rng(8).random(10)
    values = np.repeat(cluster_values, 10)  # (100,)
    clusters = np.repeat([f"board{c}" for c in range(10)], 10)
    s = seed_summary([values], clusters=clusters)
    assert (s["low"], s["high"]) == pytest.approx(bootstrap_ci(cluster_values))
    iid_lo, iid_hi = bootstrap_ci(values)
    assert (s["high"] - s["low"]) > 2.5 * (iid_hi - iid_lo)
    assert bootstrap_replicates(values, clusters).shape == (1000,)


def test_paired_seeds_draw_alike_and_a_one_seed_model_is_constant():
    a = np.stack([np.zeros(30), np.ones(30)])  # two seeds, 0 and 1 on every query
    same = paired_difference(a, a.copy())  # both models draw the same seeds: every replicate is 0
    assert (same["low"], same["high"], same["p"]) == (0.0, 0.0, 1.0) and not same["significant"]
    frozen = np.full(30, 0.5)  # one seed: the same in every seed draw
    d = paired_difference(a, frozen)
    assert d["diff"] == 0.0 and (d["low"], d["high"]) == (-0.5, 0.5) and d["p"] == 1.0


def test_p_value_is_twice_the_smaller_tail_share():
    assert p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == 0.5  # 2 * min(1/4, 3/4)
    assert p_value(np.array([0.1, 0.2])) == 0.0 and p_value(np.zeros(3)) == 1.0


def test_holm_adjusts_by_rank_keeps_the_order_and_caps_at_one():
    """Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (non-decreasing)."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])


def test_holm_significant_decides_on_adjusted_p_and_the_query_count():
    diffs = [{"p": p, "queries": q} for p, q in ((0.01, 50), (0.04, 50), (0.03, 50), (0.005, 10))]
    holm_significant(diffs)
    assert [d["p_holm"] for d in diffs] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [d["significant"] for d in diffs] == [True, False, False, False]  # the last has too few queries
    assert paired_difference(np.full(40, 0.3), np.full(40, 0.1))["p"] == 0.0


def test_the_interval_is_the_percentiles_of_resampled_means_at_the_level():
    """The definition: n_boot resamples of the queries with replacement (seeded), the (1 - level) / 2 tails."""
    x = np.random.default_rng(4).random(37)
    rng = np.random.default_rng(0)
    means = x[rng.integers(0, len(x), size=(500, len(x)))].mean(axis=1)
    for level in (0.95, 0.5):
        tail = 100 * (1 - level) / 2
        expected = tuple(np.percentile(means, [tail, 100 - tail]))
        assert bootstrap_ci(x, n_boot=500, level=level) == pytest.approx(expected, rel=1e-12)
    assert bootstrap_ci(x) == bootstrap_ci(x, n_boot=1000, level=0.95, seed=0)  # the documented defaults


def test_float32_values_are_averaged_in_float64():
    x = np.random.default_rng(5).random(300).astype(np.float32)
    assert bootstrap_ci(x) == bootstrap_ci(x.astype(np.float64))
    d32 = paired_difference(x[:150], x[150:])
    d64 = paired_difference(x[:150].astype(np.float64), x[150:].astype(np.float64))
    assert d32 == d64
    s32 = seed_summary([x[:150], x[150:]])
    assert s32 == seed_summary([x[:150].astype(np.float64), x[150:].astype(np.float64)])


def test_paired_difference_and_seed_summary_pass_their_seed_and_resamples_on():
    a, b = np.random.default_rng(6).random((2, 40))
    d = paired_difference(a, b, n_boot=300, level=0.8, seed=7)
    assert (d["low"], d["high"]) == pytest.approx(bootstrap_ci(a - b, n_boot=300, level=0.8, seed=7))
    assert paired_difference(a, b)["low"] == pytest.approx(bootstrap_ci(a - b)[0])  # seed 0 by default
    s = seed_summary([a], n_boot=300, seed=7)
    assert (s["low"], s["high"]) == pytest.approx(bootstrap_ci(a, n_boot=300, seed=7))
    assert seed_summary([a])["low"] == pytest.approx(bootstrap_ci(a)[0])


def test_empty_and_zero_baselines_give_nan_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice", no division by zero
        empty = paired_difference([], [])
        assert np.isnan(empty["diff"]) and np.isnan(empty["relative"]) and np.isnan(empty["low"])
        assert empty["queries"] == 0 and not empty["significant"]
        zero = paired_difference([0.5, 0.5], [0.0, 0.0])
        assert zero["diff"] == 0.5 and np.isnan(zero["relative"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the std of empty seed means warns
        nothing = seed_summary([np.zeros(0), np.zeros(0)])
    assert np.isnan(nothing["mean"]) and np.isnan(nothing["low"]) and nothing["seeds"] == 2
