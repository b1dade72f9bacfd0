"""Bootstrap intervals (covip.core.stats) on constructed samples whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from covip.core.stats import (
    bootstrap_draws,
    mean_interval,
    paired_difference_interval,
    percentile_bounds,
    ratio_interval,
)


def rng(seed=0):
    return np.random.default_rng(seed)


# ----- draws


@pytest.mark.parametrize(
    "n_samples, n_bootstrap",
    [
        (1, 1),
        (5, 200),
        (37, 11),
        (10, 0),  # no draws: an empty (0, n) table
        (2_000_001, 3),  # one row per chunk: three chunks joined
        (1_333_334, 5),  # two rows per chunk: chunks of 2, 2 and 1
    ],
)
def test_bootstrap_draws_shape_and_range(n_samples, n_bootstrap):
    draws = bootstrap_draws(rng(), n_samples, n_bootstrap)
    assert draws.shape == (n_bootstrap, n_samples)
    assert np.issubdtype(draws.dtype, np.integer)
    if draws.size:
        assert draws.min() >= 0 and draws.max() < n_samples


def test_chunked_draws_are_seeded_and_differ_between_rows():
    first = bootstrap_draws(rng(3), 2_000_001, 3)
    again = bootstrap_draws(rng(3), 2_000_001, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    assert not np.array_equal(first, bootstrap_draws(rng(4), 2_000_001, 3))


# ----- percentile bounds


@pytest.mark.parametrize(
    "confidence, expected",
    [(0.9, (5.0, 95.0)), (0.5, (25.0, 75.0)), (0.98, (1.0, 99.0))],
)
def test_percentile_bounds(confidence, expected):
    assert percentile_bounds(np.arange(101, dtype=float), confidence) == pytest.approx(expected)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_percentile_bounds_rejects_a_confidence_outside_0_1(confidence):
    with pytest.raises(ValueError, match="confidence must be in"):
        percentile_bounds(np.arange(3.0), confidence)


# ----- the interval of a mean


@pytest.mark.parametrize("values, n_bootstrap", [([], 100), ([0.5, 1.0], 0)])
def test_mean_interval_is_none_without_values_or_resamples(values, n_bootstrap):
    assert mean_interval(values, n_bootstrap, rng()) == (None, None)


@pytest.mark.parametrize("values, expected", [([0.7] * 12, 0.7), ([3.0], 3.0), ([-1.0, -1.0], -1.0)])
def test_mean_interval_of_a_sample_without_spread_is_a_point(values, expected):
    assert mean_interval(values, 100, rng()) == pytest.approx((expected, expected))


def test_mean_interval_brackets_the_mean_with_the_normal_width():
    values = [0.0] * 50 + [1.0] * 50  # mean 0.5, standard error 0.05
    low, high = mean_interval(values, 2000, rng(1))
    assert low < 0.5 < high
    assert high - low == pytest.approx(2 * 1.96 * 0.05, rel=0.2)


def test_mean_interval_shrinks_with_the_square_root_of_the_sample():
    pattern = [0.0, 0.25, 0.5, 1.0]
    small = mean_interval(pattern * 10, 1000, rng(2))
    large = mean_interval(pattern * 160, 1000, rng(2))  # 16x the samples: about 4x narrower
    ratio = (small[1] - small[0]) / (large[1] - large[0])
    assert 3.0 < ratio < 5.3


@pytest.mark.parametrize("confidence, lowest, highest", [(0.95, 0.89, 0.99), (0.5, 0.36, 0.64)])
def test_mean_interval_covers_the_true_mean_at_about_its_confidence(confidence, lowest, highest):
    """Bernoulli(0.3) samples of 60: the percentile interval holds 0.3 in about `confidence` of the trials."""
    draws = rng(7)
    trials = 300
    covered = 0
    for _ in range(trials):
        sample = (draws.random(60) < 0.3).astype(float)
        low, high = mean_interval(sample, 400, draws, confidence)
        covered += low <= 0.3 <= high
    assert lowest <= covered / trials <= highest


def test_mean_interval_is_seeded():
    values = list(np.linspace(0, 1, 25))
    assert mean_interval(values, 300, rng(5)) == mean_interval(values, 300, rng(5))
    assert mean_interval(values, 300, rng(5)) != mean_interval(values, 300, rng(6))


# ----- pooled ratios (CapEval-QA), in percent


def test_ratio_interval_pools_the_drawn_samples_in_percent():
    correct, total = np.array([1, 3]), np.array([2, 6])  # every sample at 50%
    draws = bootstrap_draws(rng(), 2, 200)
    assert ratio_interval(correct, total, draws, 0.95) == pytest.approx((50.0, 50.0))
    # One sample at 0/1 and one at 9/9: a draw pools questions, so the ratios are 0, 90 or 100 %.
    low, high = ratio_interval(np.array([0, 9]), np.array([1, 9]), bootstrap_draws(rng(), 2, 500), 0.95)
    assert (low, high) == pytest.approx((0.0, 100.0))


def test_ratio_interval_skips_draws_without_items():
    draws = np.array([[0, 0], [1, 1], [0, 1]])
    # Sample 0 has no questions of this kind: the draw of it alone says nothing.
    low, high = ratio_interval(np.array([0, 2]), np.array([0, 4]), draws, 0.5)
    assert (low, high) == pytest.approx((50.0, 50.0))
    assert ratio_interval(np.array([0, 0]), np.array([0, 0]), draws, 0.95) == (None, None)


def test_paired_difference_interval_removes_the_between_sample_spread():
    # Samples range from easy to hard; the second side always gets exactly one question of four less.
    base_correct = np.array([4, 3, 2, 1, 4, 1])
    total = np.full(6, 4)
    draws = bootstrap_draws(rng(), 6, 500)
    low, high = paired_difference_interval(base_correct, total, base_correct - 1, total, draws, 0.95)
    assert (low, high) == pytest.approx((25.0, 25.0))
    # Each side alone is spread wide over the same draws.
    side_low, side_high = ratio_interval(base_correct, total, draws, 0.95)
    assert side_high - side_low > 20.0


def test_paired_difference_interval_sign_and_empty_draws():
    draws = np.array([[0, 1], [1, 1], [0, 0]])
    base_c, base_t = np.array([1, 1]), np.array([2, 2])  # 50 %
    better = paired_difference_interval(base_c, base_t, np.array([2, 2]), np.array([2, 2]), draws, 0.5)
    assert better == pytest.approx((-50.0, -50.0))  # base - other: a higher other is negative
    # A draw where either side has no items is skipped; none left -> no interval.
    assert paired_difference_interval(base_c, base_t, np.array([0, 0]), np.array([0, 0]), draws, 0.5) == (None, None)
    skipped = paired_difference_interval(base_c, base_t, np.array([1, 0]), np.array([1, 0]), draws, 0.5)
    assert skipped == pytest.approx((-50.0, -50.0))  # only draws holding sample 0 count: 50 % - 100 %
