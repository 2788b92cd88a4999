"""From per-edit scores to a ranking, and the clipped Plackett–Luce preference loss (docs/method.md §5).

Pure tensor functions: the trainer gathers scores across processes before calling them.
Scores are standardised per group of gathered rows (``reward.standardize``): ``"batch"`` (the
original) groups the rows of each sampling batch, ``"epoch"`` puts every row of the epoch in one,
``"input"`` makes each row (one input's edits) its own group. ``reward.ranking = "random"`` ranks
edits at random instead (:func:`random_costs`): the control run that shows how far updates drift
without feedback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

STANDARDIZE_MODES = ("batch", "epoch", "input")
RANKINGS = ("scores", "random")
# The largest log-ratio whose ratio exp(ρ) is finite in fp32 (log of float32's largest value, ≈ 88.72).
FP32_EXP_LIMIT = math.log(torch.finfo(torch.float32).max)


def sampling_batch_of_rows(batch_sizes: Sequence[int], num_processes: int) -> torch.Tensor:
    """Sampling batch index ``(N,)`` of each row of scores gathered over processes.

    Every process samples batches of ``batch_sizes`` inputs in this order, and the gather puts the
    processes' rows one process after the other (N = num_processes · Σ batch_sizes): sampling
    batch k is batch k of every process.
    """
    one_process = torch.cat([torch.full((size,), index) for index, size in enumerate(batch_sizes)])
    return one_process.repeat(num_processes)


def standardization_groups(mode: str, batch_sizes: Sequence[int], num_processes: int) -> torch.Tensor:
    """Group ``(N,)`` of each gathered row: its sampling batch (``"batch"``), 0 (``"epoch"``) or
    the row itself (``"input"``).

    ``"input"`` weighs every score by how much it separates the edits of one input, whatever it
    varies between inputs; with nb_gen = 2 each standardised score is ±1/√2, so two scores
    that disagree cancel (a tie: no preference) and only edits better on both are preferred.
    """
    if mode == "batch":
        return sampling_batch_of_rows(batch_sizes, num_processes)
    if mode == "epoch":
        return torch.zeros(sum(batch_sizes) * num_processes, dtype=torch.long)
    if mode == "input":
        return torch.arange(sum(batch_sizes) * num_processes)
    raise ValueError(f"reward.standardize must be one of {STANDARDIZE_MODES}, got {mode!r}")


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """(s − mean) / (std + 1e-8), mean and unbiased std (``torch.std``, as the original) over every
    element (at least 2: a group holds nb_gen ≥ 2 edits). Every score of a group shares the
    population/unbiased std ratio, so the ranking is the population std's one."""
    return (scores - scores.mean()) / (scores.std() + 1e-8)


def standardize_per_group(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """:func:`standardize` over the rows of each group: scores (N, G), groups (N,) → (N, G)."""
    groups = groups.to(scores.device)
    standardized = torch.empty_like(scores)
    for group in groups.unique():
        rows = groups == group
        standardized[rows] = standardize(scores[rows])
    return standardized


def combine_scores(scores: dict[str, torch.Tensor], weights: dict[str, float],
                   lower_is_better: dict[str, bool], groups: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k · sign_k · standardize_per_group(s_k, groups): (N, G) combined cost, lower is better.

    ``sign`` is +1 for lower-is-better scores and −1 for higher-is-better ones; ``groups`` (N,)
    from :func:`standardization_groups`.
    """
    combined = None
    for name, weight in weights.items():
        sign = 1.0 if lower_is_better[name] else -1.0
        term = sign * float(weight) * standardize_per_group(scores[name].float(), groups)
        combined = term if combined is None else combined + term
    return combined


def round_for_ties(combined: torch.Tensor, decimals: int = 4) -> torch.Tensor:
    """(N, G) combined costs rounded to ``decimals``. Standardised per input (``"input"``), each
    score of an input's two edits is ±1/√2 up to its last bits (the std depends on the scores'
    difference), so two scores that disagree must tie exactly, not by a rounding error."""
    return combined.round(decimals=decimals)


def ranking_costs(scores: dict[str, torch.Tensor], weights: dict[str, float], lower_is_better: dict[str, bool],
                  mode: str, batch_sizes: Sequence[int], num_processes: int) -> torch.Tensor:
    """(N, G) combined cost of gathered scores {name: (N, G)}, standardised per ``mode`` group
    (:func:`standardization_groups`), rounded for ties in mode ``"input"`` (:func:`round_for_ties`)."""
    groups = standardization_groups(mode, batch_sizes, num_processes)
    combined = combine_scores(scores, weights, lower_is_better, groups)
    return round_for_ties(combined) if mode == "input" else combined


def random_costs(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(N, G) costs uniform in [0, 1) from ``generator`` (CPU): a ranking of every input's edits
    that ignores their scores, without ties. With the same generator state on every process, every
    process ranks alike (the control run of ``reward.ranking = "random"``)."""
    return torch.rand(shape, generator=generator)


def rank_edits(combined: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each input's edits best-first by combined cost.

    Args:
        combined: (N, G) cost, lower is better.
    Returns:
        order: (N, G) edit indices, best first.
        has_preference: (N,) False where two edits of the input tie (no preference to learn).
    """
    sorted_costs, order = combined.sort(dim=1, stable=True)
    has_preference = (sorted_costs.diff(dim=1) != 0).all(dim=1)
    return order, has_preference


def plackett_luce_loss(log_ratio: torch.Tensor, *, eps: float, beta: float) -> torch.Tensor:
    """Clipped Plackett–Luce loss per input, computed in log space.

    With log r_k = beta · clamp(ρ_k, log(1 − eps), log(1 + eps)),
    L = −Σ_i [log r_(i) − logsumexp_{j≥i} log r_(j)].

    Args:
        log_ratio: (N, G) log p_θ − log p_ref of each edit, ordered best first.
    Returns:
        (N,) loss; log G! at ratio 1 (log 2 for G = 2).
    """
    scaled = beta * log_ratio.clamp(math.log(1 - eps), math.log(1 + eps))
    suffix_lse = scaled.flip(1).logcumsumexp(dim=1).flip(1)
    return -(scaled - suffix_lse)[:, :-1].sum(dim=1)


@dataclass
class RatioStats:
    """Diagnostics of the policy/reference ratio: mean of exp(ρ) and the fraction outside the clip
    band, over every edit of the micro-batch (tied inputs too: they measure the policy's drift
    although they add nothing to the loss)."""

    ratio_mean: torch.Tensor
    clipfrac: torch.Tensor

    @classmethod
    def of(cls, log_ratio: torch.Tensor, eps: float) -> "RatioStats":
        ratio = log_ratio.detach().exp()
        return cls(ratio.mean(), ((ratio < 1 - eps) | (ratio > 1 + eps)).float().mean())


def preference_loss(log_prob: torch.Tensor, reference_log_prob: torch.Tensor, order: torch.Tensor,
                    has_preference: torch.Tensor, *, eps: float, beta: float):
    """Mean clipped Plackett–Luce loss of a micro-batch, and its ratio diagnostics.

    Args:
        log_prob: (b, G) policy log-probs of each edit's transition (with gradient).
        reference_log_prob: (b, G) the frozen reference's log-probs of the same transitions.
        order: (b, G) edit indices best first (:func:`rank_edits`).
        has_preference: (b,) inputs whose edits are not tied; the others contribute 0.
    Returns:
        (loss scalar, :class:`RatioStats`, log_ratio (b, G) in ranked order).
    """
    log_ratio = (log_prob - reference_log_prob).gather(1, order)
    per_input = plackett_luce_loss(log_ratio, eps=eps, beta=beta)
    weights = has_preference.to(per_input.dtype)
    loss = (per_input * weights).sum() / weights.sum().clamp_min(1)
    return loss, RatioStats.of(log_ratio, eps), log_ratio


def micro_step_is_usable(loss: torch.Tensor, log_ratio: torch.Tensor, *, skip_ratio_overflow: bool) -> torch.Tensor:
    """0-d bool: whether a micro-step may be trained on (the trainer skips it on every process
    when any process says no).

    Never with a non-finite loss or log-ratio. With ``skip_ratio_overflow`` (the original's rule)
    neither when any ratio exp(ρ) of ``log_ratio`` (b, G) is inf or NaN in fp32, i.e. some ρ above
    :data:`FP32_EXP_LIMIT`, tested before the clamp. Without it such a micro-step trains: the loss
    works in log space, so the clamped ratio of that edit sits at the band's edge.
    """
    usable = torch.isfinite(loss) & torch.isfinite(log_ratio).all()
    if skip_ratio_overflow:
        usable = usable & torch.isfinite(log_ratio.detach().float().exp()).all()
    return usable
