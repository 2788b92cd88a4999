"""Standardisation, ranking and the clipped Plackett–Luce loss (docs/method.md §5)."""

import math

import pytest
import torch

from editspecialists.training.ranking import (
    FP32_EXP_LIMIT,
    RatioStats,
    combine_scores,
    micro_step_is_usable,
    plackett_luce_loss,
    preference_loss,
    random_costs,
    rank_edits,
    ranking_costs,
    round_for_ties,
    sampling_batch_of_rows,
    standardization_groups,
    standardize,
    standardize_per_group,
)
from tests.helpers import TWO_BATCHES


def test_standardize_uses_every_element():
    scores = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    expected = (scores - 4.0) / (math.sqrt(20.0 / 3.0) + 1e-8)  # unbiased: 20 / (4 - 1)
    torch.testing.assert_close(standardize(scores), expected)


def test_gathered_rows_belong_to_the_sampling_batch_of_their_process():
    # 2 processes, each sampling a batch of 2 inputs then one of 1: rows p0b0 p0b0 p0b1 p1b0 p1b0 p1b1
    assert sampling_batch_of_rows([2, 1], num_processes=2).tolist() == [0, 0, 1, 0, 0, 1]
    assert standardization_groups("batch", [2, 1], 2).tolist() == [0, 0, 1, 0, 0, 1]
    assert standardization_groups("epoch", [2, 1], 2).tolist() == [0] * 6
    with pytest.raises(ValueError, match="reward.standardize must be one of .*'batch', 'epoch', 'input'.* got 'sample'"):
        standardization_groups("sample", [2, 1], 2)


def test_standardize_per_group_uses_each_groups_rows_only():
    scores = torch.tensor([[1.0, 3.0], [10.0, 30.0], [5.0, 7.0], [50.0, 70.0]])
    groups = torch.tensor([0, 1, 0, 1])
    # group 0: {1, 3, 5, 7}, mean 4, unbiased std √(20/3); group 1: {10, 30, 50, 70}, mean 40, 10√(20/3)
    std = math.sqrt(20 / 3)
    low, high = [-3.0 / std, -1.0 / std], [1.0 / std, 3.0 / std]
    expected = torch.tensor([low, low, high, high])
    torch.testing.assert_close(standardize_per_group(scores, groups), expected)
    # one group: mean 22, std √(Σ(s − 22)² / 7) = √(4612 / 7)
    torch.testing.assert_close(standardize_per_group(scores, torch.zeros(4, dtype=torch.long)),
                               (scores - 22.0) / math.sqrt(4612 / 7))


def test_combine_signs_higher_is_better_scores():
    structural = torch.tensor([[0.0, 1.0]])
    brightness = torch.tensor([[0.2, 0.8]])
    combined = combine_scores({"structural": structural, "brightness": brightness},
                              {"structural": 1.0, "brightness": 2.0},
                              {"structural": True, "brightness": False}, torch.zeros(1, dtype=torch.long))
    expected = standardize(structural) - 2.0 * standardize(brightness)
    torch.testing.assert_close(combined, expected)


@pytest.mark.parametrize("mode", ["batch", "epoch"])
def test_batch_and_epoch_standardisation_by_hand(mode):
    groups = standardization_groups(mode, [2, 2], num_processes=1)
    combined = combine_scores(TWO_BATCHES, {"a": 1.0, "b": 1.0}, {"a": True, "b": True}, groups)
    root2 = math.sqrt(2)
    # Written with population stds; the unbiased std (torch.std, the original's) of a group of n
    # values is √(n / (n − 1)) times larger, for every score alike.
    if mode == "batch":
        # a per batch: mean 2 (200), std √2 (100√2) → [−√2, √2], [0, 0]
        # b per batch: mean ½, std ½ → [1, −1], [−1, 1]
        expected = [[1 - root2, root2 - 1], [-1, 1], [1 - root2, root2 - 1], [-1, 1]]
        values_per_group = 4
    else:
        # a over the epoch: mean 101, std √19802 (Σ(a − 101)² = 158416 over 8 values); b as per batch
        std = math.sqrt(19802)
        expected = [[-101 / std + 1, -97 / std - 1], [-99 / std - 1, -99 / std + 1],
                    [-101 / std + 1, 299 / std - 1], [99 / std - 1, 99 / std + 1]]
        values_per_group = 8
    unbiased = math.sqrt((values_per_group - 1) / values_per_group)
    torch.testing.assert_close(combined, torch.tensor(expected) * unbiased)
    order, _ = rank_edits(combined)
    first_input_best = 0 if mode == "batch" else 1  # over the epoch, batch 0's spread of a drowns
    assert order[0, 0].item() == first_input_best


def test_input_standardisation_prefers_only_edits_better_on_every_score():
    """Per input, each score of two edits is ±1/√2 whatever its spread: a wide semantic gap no
    longer outweighs a narrow structural one. Scores that disagree tie (no preference), also when
    their spreads differ by orders of magnitude (the std's rounding, and the 1e-8 added to it,
    differ with the spread)."""
    scores = {"semantic": torch.tensor([[0.2, 0.9], [0.2, 0.9], [0.3, 0.31], [0.1, 0.101]]),
              "structural": torch.tensor([[0.01, 0.02], [0.02, 0.01], [0.5, 0.2], [0.7, 0.3]])}
    groups = standardization_groups("input", [2, 2], num_processes=1)
    assert groups.tolist() == [0, 1, 2, 3]
    combined = combine_scores(scores, {"semantic": 1.0, "structural": 1.0}, {"semantic": True, "structural": True},
                              groups)
    torch.testing.assert_close(combined[0], torch.tensor([-math.sqrt(2), math.sqrt(2)]))
    assert (combined[1:].diff(dim=1) != 0).any()  # unrounded, disagreeing scores do not tie exactly
    costs = ranking_costs(scores, {"semantic": 1.0, "structural": 1.0}, {"semantic": True, "structural": True},
                          "input", [2, 2], num_processes=1)
    torch.testing.assert_close(costs, round_for_ties(combined), atol=0, rtol=0)
    order, has_preference = rank_edits(costs)
    assert has_preference.tolist() == [True, False, False, False]
    assert order[0].tolist() == [0, 1]


def test_rank_best_first_and_ties_carry_no_preference():
    combined = torch.tensor([[0.3, -1.0, 2.0], [1.0, 1.0, 0.0], [5.0, 4.0, 3.0]])
    order, has_preference = rank_edits(combined)
    assert order.tolist() == [[1, 0, 2], [2, 0, 1], [2, 1, 0]]
    assert has_preference.tolist() == [True, False, True]


def single_process_ranking(scores, ranking, seed=0):
    """:func:`rank_gathered` on one process (gather is the identity) of {name: (N, 2)} scores."""
    from types import SimpleNamespace

    import ml_collections

    from editspecialists.training.trainer import RANKING, derived_generator, rank_gathered

    reward = ml_collections.ConfigDict({"weights": {name: 1.0 for name in scores}, "standardize": "batch",
                                        "ranking": ranking})
    accelerator = SimpleNamespace(gather=lambda tensor: tensor, num_processes=1)
    return rank_gathered(accelerator, scores, [len(next(iter(scores.values())))], reward,
                         derived_generator(seed, RANKING, 0))


def test_random_ranking_ignores_the_scores_and_is_reproducible():
    scores = torch.tensor([[0.1, 0.9]] * 32)
    opposite = scores.flip(1)
    by_scores = single_process_ranking({"semantic": scores}, "scores")[1]
    assert by_scores.tolist() == [[0, 1]] * 32, "the method ranks the lower cost first"
    gathered, order, has_preference = single_process_ranking({"semantic": scores}, "random")
    assert torch.equal(gathered["semantic"], scores), "the scores are still gathered (and logged)"
    assert has_preference.all(), "random costs never tie"
    assert torch.equal(order, single_process_ranking({"semantic": opposite}, "random")[1])
    assert torch.equal(order, single_process_ranking({"semantic": scores}, "random")[1]), "seeded"
    assert not torch.equal(order, single_process_ranking({"semantic": scores}, "random", seed=1)[1])
    best_first = (order[:, 0] == 0).float().mean().item()
    assert 0.2 < best_first < 0.8, f"either edit first at random: {best_first} of 32 inputs ranked edit 0 first"


def test_random_costs_come_from_the_generator_alone():
    first = random_costs((4, 3), torch.Generator().manual_seed(5))
    assert first.shape == (4, 3) and ((first >= 0) & (first < 1)).all()
    assert torch.equal(first, random_costs((4, 3), torch.Generator().manual_seed(5)))


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


EPS, BETA = 0.1, 0.1
LOW, HIGH = math.log(1 - EPS), math.log(1 + EPS)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def hand_plackett_luce(rho_best_first):
    """−Σ_i log(r_(i) / Σ_{j≥i} r_(j)), r = exp(β·clamp(ρ)), in plain Python floats."""
    r = [math.exp(BETA * min(max(rho, LOW), HIGH)) for rho in rho_best_first]
    return -sum(math.log(r[i] / sum(r[i:])) for i in range(len(r) - 1))


def test_preference_loss_pairwise_is_the_logsigmoid_of_the_ranked_log_ratios():
    log_prob = torch.tensor([[-1.00, -1.08], [-2.00, -1.95]], dtype=torch.float64)
    reference = torch.tensor([[-1.03, -1.02], [-2.01, -2.02]], dtype=torch.float64)
    order = torch.tensor([[0, 1], [1, 0]])  # input 0: edit 0 best; input 1: edit 1 best
    loss, stats, log_ratio = preference_loss(log_prob, reference, order, torch.tensor([True, True]),
                                             eps=EPS, beta=BETA)
    rho = (log_prob - reference).tolist()  # all inside the clip band
    assert all(LOW < value < HIGH for row in rho for value in row)
    expected = [-log_sigmoid(BETA * (rho[0][0] - rho[0][1])), -log_sigmoid(BETA * (rho[1][1] - rho[1][0]))]
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-9)
    torch.testing.assert_close(log_ratio, torch.tensor([[rho[0][0], rho[0][1]], [rho[1][1], rho[1][0]]],
                                                       dtype=torch.float64))
    assert stats.clipfrac.item() == 0


def test_preference_loss_of_three_edits_is_plackett_luce_by_hand():
    log_prob = torch.tensor([[-0.50, -0.47, -0.58]], dtype=torch.float64)
    reference = torch.tensor([[-0.52, -0.52, -0.52]], dtype=torch.float64)
    order = torch.tensor([[1, 2, 0]])  # edit 1 best, then edit 2, edit 0 worst
    loss, _, _ = preference_loss(log_prob, reference, order, torch.tensor([True]), eps=EPS, beta=BETA)
    rho = (log_prob - reference)[0].tolist()
    r1, r2, r0 = (math.exp(BETA * rho[k]) for k in (1, 2, 0))
    expected = -math.log(r1 / (r1 + r2 + r0)) - math.log(r2 / (r2 + r0))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert loss.item() == pytest.approx(hand_plackett_luce([rho[1], rho[2], rho[0]]), rel=1e-9)


def test_preference_loss_follows_the_ranking_not_the_edit_positions():
    generator = torch.Generator().manual_seed(0)
    log_prob = -1 + 0.05 * torch.randn(4, 3, generator=generator, dtype=torch.float64)
    reference = -1 + 0.05 * torch.randn(4, 3, generator=generator, dtype=torch.float64)
    combined = torch.randn(4, 3, generator=generator)
    order, has_preference = rank_edits(combined)
    loss, _, log_ratio = preference_loss(log_prob, reference, order, has_preference, eps=EPS, beta=BETA)
    permutation = torch.tensor([2, 0, 1])
    order_p, preference_p = rank_edits(combined[:, permutation])
    loss_p, _, log_ratio_p = preference_loss(log_prob[:, permutation], reference[:, permutation], order_p,
                                             preference_p, eps=EPS, beta=BETA)
    assert loss_p.item() == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(log_ratio_p, log_ratio)
    # reversing the ranking gives the Plackett–Luce loss of the reversed order, a different value
    reversed_loss, _, _ = preference_loss(log_prob, reference, order.flip(1), has_preference, eps=EPS, beta=BETA)
    rho = log_prob - reference
    expected = sum(hand_plackett_luce([rho[i, k].item() for k in order[i].flip(0)]) for i in range(4)) / 4
    assert reversed_loss.item() == pytest.approx(expected, rel=1e-9)
    assert abs(reversed_loss.item() - loss.item()) > 1e-4


def test_swapping_best_and_worst_of_a_pair():
    log_prob, reference = torch.tensor([[-1.0, -1.06]]), torch.tensor([[-1.02, -1.01]])
    rho_0, rho_1 = (log_prob - reference)[0].tolist()
    for order, best, worst in (([[0, 1]], rho_0, rho_1), ([[1, 0]], rho_1, rho_0)):
        loss, _, _ = preference_loss(log_prob, reference, torch.tensor(order), torch.tensor([True]),
                                     eps=EPS, beta=BETA)
        assert loss.item() == pytest.approx(-log_sigmoid(BETA * (best - worst)), rel=1e-5)
    # the better-scoring edit 0 being ranked best gives the lower loss
    assert rho_0 > rho_1 and -log_sigmoid(BETA * (rho_0 - rho_1)) < math.log(2) < -log_sigmoid(BETA * (rho_1 - rho_0))


def test_tied_inputs_contribute_nothing_and_are_not_counted():
    log_prob = torch.tensor([[-1.02, -0.97], [-1.5, -1.45], [-0.7, -0.73]], dtype=torch.float64, requires_grad=True)
    reference = torch.tensor([[-1.0, -1.0], [-1.5, -1.5], [-0.71, -0.69]], dtype=torch.float64)
    order = torch.tensor([[0, 1], [1, 0], [1, 0]])
    has_preference = torch.tensor([True, False, True])
    loss, _, _ = preference_loss(log_prob, reference, order, has_preference, eps=EPS, beta=BETA)
    untied = torch.tensor([0, 2])
    only_untied, _, _ = preference_loss(log_prob[untied].detach(), reference[untied], order[untied],
                                        torch.tensor([True, True]), eps=EPS, beta=BETA)
    assert loss.item() == pytest.approx(only_untied.item(), rel=1e-12)
    loss.backward()
    assert torch.equal(log_prob.grad[1], torch.zeros(2, dtype=torch.float64))
    assert (log_prob.grad[[0, 2]].abs() > 0).all()
    # a batch of ties only: loss exactly 0, no gradient, no division by zero
    zero, _, _ = preference_loss(log_prob, reference, order, torch.zeros(3, dtype=torch.bool), eps=EPS, beta=BETA)
    assert zero.item() == 0 and torch.isfinite(zero)


def test_clipped_log_ratios_are_clamped_pass_no_gradient_and_are_counted():
    reference = torch.zeros(3, 2, dtype=torch.float64)
    inside = [0.03, -0.02]
    log_prob = torch.tensor([inside, [0.5, -0.04], [-0.3, 0.4]], dtype=torch.float64, requires_grad=True)
    order = torch.tensor([[0, 1], [0, 1], [0, 1]])
    loss, stats, _ = preference_loss(log_prob, reference, order, torch.ones(3, dtype=torch.bool), eps=EPS, beta=BETA)
    expected = (hand_plackett_luce(inside) + hand_plackett_luce([HIGH, -0.04]) + hand_plackett_luce([LOW, HIGH])) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    grad = log_prob.grad
    assert grad[1, 0] == 0 and grad[2, 0] == 0 and grad[2, 1] == 0  # the three clamped terms
    assert grad[0, 0] < 0 < grad[0, 1] and grad[1, 1] != 0  # in-band terms still learn
    assert stats.clipfrac.item() == pytest.approx(3 / 6)
    assert stats.ratio_mean.item() == pytest.approx(
        sum(math.exp(v) for v in [0.03, -0.02, 0.5, -0.04, -0.3, 0.4]) / 6, rel=1e-6)


@pytest.mark.slow
def test_two_processes_standardise_each_sampling_batch_across_processes(tmp_path):
    import json
    import os

    from tests.helpers import REPO, launch_two_processes

    launch_two_processes([os.path.join(REPO, "tests", "ranking_worker.py"), str(tmp_path)], tmp_path)
    # gathered rows: process 0's batches 0, 1, then process 1's: rows 0, 2, 1, 3 of TWO_BATCHES
    for process in (0, 1):
        orders = json.loads((tmp_path / f"order{process}.json").read_text())
        assert orders["batch"] == [[0, 1]] * 4, "sampling batch 0 is rows 0 and 1 of TWO_BATCHES"
        assert orders["epoch"] == [[1, 0], [0, 1], [0, 1], [0, 1]]
        assert orders["random"] == orders_random_on_one_process(), "every process ranks alike at random"


def orders_random_on_one_process():
    from editspecialists.training.trainer import RANKING, derived_generator

    return rank_edits(random_costs((4, 2), derived_generator(7, RANKING, 0)))[0].tolist()


def test_the_original_skip_rule_tests_every_ratio_for_fp32_overflow_before_the_clamp():
    assert abs(FP32_EXP_LIMIT - 88.7228) < 1e-4  # log(3.4028235e38)
    loss = torch.tensor(0.69)
    below, above = torch.tensor([[88.72, 0.0]]), torch.tensor([[0.0, 88.73]])
    assert torch.isinf(above.exp()).any() and torch.isfinite(below.exp()).all()
    for skip in (True, False):
        assert micro_step_is_usable(loss, below, skip_ratio_overflow=skip)
        assert micro_step_is_usable(loss, torch.tensor([[-1e4, 0.0]]), skip_ratio_overflow=skip), "exp -> 0 is finite"
        assert not micro_step_is_usable(loss, torch.tensor([[float("nan"), 0.0]]), skip_ratio_overflow=skip)
        assert not micro_step_is_usable(torch.tensor(float("inf")), below, skip_ratio_overflow=skip)
    assert not micro_step_is_usable(loss, above, skip_ratio_overflow=True)
    assert micro_step_is_usable(loss, above, skip_ratio_overflow=False)
    # the overflowing edit's clamped loss is finite: without the rule it is trained on
    clipped = plackett_luce_loss(above, eps=0.1, beta=0.1)
    assert torch.isfinite(clipped).all()
