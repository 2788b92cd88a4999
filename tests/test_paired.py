"""Paired differences of two models on the same edits, and the verdict beyond 2 standard errors."""

import math

import numpy as np
import pytest

from editspecialists.paired import PairedDifference, paired_difference, verdict


def test_paired_difference_is_the_mean_of_per_edit_differences_with_its_standard_error():
    rng = np.random.default_rng(0)
    base = rng.normal(size=20)
    current = base + rng.normal(0.3, 0.1, size=20)
    difference = paired_difference(list(current), list(base))
    diffs = current - base
    assert difference.mean == pytest.approx(diffs.mean(), abs=1e-12)
    assert difference.se == pytest.approx(diffs.std(ddof=1) / math.sqrt(20), abs=1e-12)
    assert difference.count == 20


def test_identical_models_differ_by_exactly_zero_and_non_finite_pairs_are_left_out():
    values = [0.1, 0.5, 0.25]
    assert paired_difference(values, values) == PairedDifference(0.0, 0.0, 3)
    assert paired_difference([1.0, math.nan, 3.0], [0.0, 1.0, 1.0]).count == 2
    assert paired_difference([1.0], [0.5]) == PairedDifference(0.5, 0.0, 1)
    with pytest.raises(ValueError, match="3 values paired with 2"):
        paired_difference([1, 2, 3], [1, 2])


@pytest.mark.parametrize("mean, se, lower_is_better, expected", [
    (-0.05, 0.01, True, "better"), (-0.05, 0.01, False, "worse"), (0.05, 0.01, True, "worse"),
    (0.05, 0.01, False, "better"), (0.019, 0.01, True, "no clear change"), (0.0, 0.0, True, "no clear change"),
    (0.021, 0.01, False, "better"),
])
def test_verdict_needs_more_than_two_standard_errors(mean, se, lower_is_better, expected):
    assert verdict(PairedDifference(mean, se, 10), lower_is_better) == expected
