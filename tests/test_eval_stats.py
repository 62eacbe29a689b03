"""Paired bootstrap intervals on constructed cases whose answer is known."""

from __future__ import annotations

import math

import pytest

from masksearch.errors import MaskSearchError
from masksearch.eval.stats import paired_bootstrap


def test_constant_difference_has_a_point_interval():
    a = [0.1, 0.5, 0.9, 0.0]
    b = [x + 0.25 for x in a]
    r = paired_bootstrap(a, b, n_boot=500)
    assert r["mean"] == pytest.approx(0.25) and r["lo"] == pytest.approx(0.25) and r["hi"] == pytest.approx(0.25)


def test_two_items_exact_percentiles():
    # differences {0, 1}: the bootstrap mean is 0 (p=1/4), 0.5 (1/2) or 1 (1/4), so the 95 %
    # interval is exactly [0, 1]
    r = paired_bootstrap([0.0, 0.0], [0.0, 1.0], n_boot=4000, seed=1)
    assert r["mean"] == 0.5 and r["lo"] == 0.0 and r["hi"] == 1.0


def test_matches_the_normal_approximation():
    # 400 differences of +1/-1 (half each): mean 0, sd 1 -> interval ~ +/- 1.96 / sqrt(400) = 0.098
    n = 400
    a = [0.0] * n
    b = [1.0 if i % 2 else -1.0 for i in range(n)]
    r = paired_bootstrap(a, b, n_boot=20000, seed=3)
    assert r["mean"] == 0.0
    assert r["lo"] == pytest.approx(-1.96 / math.sqrt(n), abs=0.012)
    assert r["hi"] == pytest.approx(1.96 / math.sqrt(n), abs=0.012)


def test_pairing_cancels_shared_variation():
    # b is a shifted by 0.1 on every item: unpaired the spread of a would swamp it, paired it is exact
    a = [0.0, 1.0] * 10
    b = [x + 0.1 for x in a]
    r = paired_bootstrap(a, b, n_boot=1000)
    assert r["lo"] == pytest.approx(0.1) and r["hi"] == pytest.approx(0.1)


def test_strata_give_the_mean_of_per_stratum_means():
    # stratum x: 1 item with difference 1; stratum y: 3 items with difference 0 -> 0.5, not 0.25
    r = paired_bootstrap([0, 0, 0, 0], [1, 0, 0, 0], strata=["x", "y", "y", "y"], n_boot=200)
    assert r["mean"] == 0.5 and r["lo"] == 0.5 and r["hi"] == 0.5


def test_bad_input_is_a_clear_error():
    with pytest.raises(MaskSearchError, match="equal-length"):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(MaskSearchError, match="at least one"):
        paired_bootstrap([], [])
