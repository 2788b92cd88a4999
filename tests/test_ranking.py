"""Standardisation, ranking and the clipped Plackett–Luce loss (SPEC §5)."""

import math

import pytest
import torch

from editspecialists.training.ranking import (
    RatioStats,
    combine_scores,
    plackett_luce_loss,
    rank_edits,
    standardize,
)


def test_standardize_uses_the_whole_batch():
    scores = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    expected = (scores - 4.0) / (math.sqrt(5.0) + 1e-8)
    torch.testing.assert_close(standardize(scores), expected)


def test_combine_signs_higher_is_better_scores():
    structural = torch.tensor([[0.0, 1.0]])
    brightness = torch.tensor([[0.2, 0.8]])
    combined = combine_scores({"structural": structural, "brightness": brightness},
                              {"structural": 1.0, "brightness": 2.0},
                              {"structural": True, "brightness": False})
    expected = standardize(structural) - 2.0 * standardize(brightness)
    torch.testing.assert_close(combined, expected)


def test_rank_best_first_and_ties_carry_no_preference():
    combined = torch.tensor([[0.3, -1.0, 2.0], [1.0, 1.0, 0.0], [5.0, 4.0, 3.0]])
    order, has_preference = rank_edits(combined)
    assert order.tolist() == [[1, 0, 2], [2, 0, 1], [2, 1, 0]]
    assert has_preference.tolist() == [True, False, True]


def brute_force_plackett_luce(log_ratio, eps, beta):
    """−Σ_i log(r_i / Σ_{j≥i} r_j) with r = clamp(exp ρ, 1−eps, 1+eps)^beta, computed directly."""
    ratio = log_ratio.double().exp().clamp(1 - eps, 1 + eps) ** beta
    losses = []
    for row in ratio:
        losses.append(-sum(math.log(row[i] / row[i:].sum()) for i in range(len(row))))
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("groups", [2, 3, 4])
def test_plackett_luce_matches_the_direct_formula(groups):
    log_ratio = torch.randn(5, groups) * 0.1
    got = plackett_luce_loss(log_ratio, eps=0.1, beta=0.1)
    torch.testing.assert_close(got.double(), brute_force_plackett_luce(log_ratio, 0.1, 0.1), atol=1e-6, rtol=1e-6)


def test_loss_starts_at_log_factorial_and_pairwise_is_logsigmoid():
    for groups in (2, 3):
        start = plackett_luce_loss(torch.zeros(1, groups), eps=0.1, beta=0.1)
        assert start.item() == pytest.approx(math.log(math.factorial(groups)), rel=1e-6)
    rho = torch.tensor([[0.05, -0.03]])
    expected = -torch.nn.functional.logsigmoid(0.1 * (rho[:, 0] - rho[:, 1]))
    torch.testing.assert_close(plackett_luce_loss(rho, eps=0.1, beta=0.1), expected)


def test_gradient_favours_the_best_edit_and_vanishes_outside_the_clip_band():
    rho = torch.zeros(1, 2, requires_grad=True)
    plackett_luce_loss(rho, eps=0.1, beta=0.1).sum().backward()
    assert rho.grad[0, 0] < 0 < rho.grad[0, 1]
    clipped = torch.tensor([[0.5, -0.5]], requires_grad=True)
    plackett_luce_loss(clipped, eps=0.1, beta=0.1).sum().backward()
    assert torch.equal(clipped.grad, torch.zeros(1, 2))


def test_ratio_stats():
    log_ratio = torch.log(torch.tensor([[1.0, 1.05], [1.2, 0.85]]))
    stats = RatioStats.of(log_ratio, eps=0.1)
    assert stats.ratio_mean.item() == pytest.approx((1 + 1.05 + 1.2 + 0.85) / 4, rel=1e-5)
    assert stats.clipfrac.item() == pytest.approx(0.5)
