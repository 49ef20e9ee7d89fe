"""pinclip.eval.stats: bootstrap intervals, paired differences and seed summaries on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from pinclip.eval.stats import MIN_QUERIES, bootstrap_ci, paired_difference, seed_summary


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
    assert (s["low"], s["high"]) == bootstrap_ci([0.5, 0.0, 1.0])  # over queries of the seed-mean model
    one = seed_summary([np.array([0.2, 0.4])])
    assert one["mean"] == pytest.approx(0.3) and one["seed_std"] == 0.0 and one["seeds"] == 1
