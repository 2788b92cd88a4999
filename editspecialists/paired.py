"""Paired comparison of two models on the same edits (same inputs, prompts, style images, seeds).

Used by training's held-out validation (each validation against the base model's) and by the
base-vs-specialist evaluation. Pure functions of per-edit values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# A change counts as clear when the paired mean difference exceeds this many standard errors.
CLEAR_CHANGE_SE = 2.0


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``current - base`` over n paired values, its standard error (sample std / sqrt(n);
    0 for n = 1), and n."""

    mean: float
    se: float
    count: int


def paired_difference(current: Sequence[float], base: Sequence[float]) -> PairedDifference:
    """:class:`PairedDifference` of two equally long sequences, value i of one paired with value i
    of the other; pairs where either is not finite are left out."""
    if len(current) != len(base):
        raise ValueError(f"{len(current)} values paired with {len(base)}")
    pairs = [(c, b) for c, b in zip(current, base) if math.isfinite(c) and math.isfinite(b)]
    if not pairs:
        return PairedDifference(math.nan, math.nan, 0)
    diffs = np.array([c - b for c, b in pairs], dtype=np.float64)
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
    return PairedDifference(float(diffs.mean()), se, len(diffs))


def verdict(difference: PairedDifference, lower_is_better: bool) -> str:
    """``"better"`` / ``"worse"`` when the mean difference exceeds :data:`CLEAR_CHANGE_SE` standard
    errors in the good / bad direction, else ``"no clear change"``."""
    if not difference.count or abs(difference.mean) <= CLEAR_CHANGE_SE * difference.se or difference.mean == 0:
        return "no clear change"
    return "better" if (difference.mean < 0) == lower_is_better else "worse"
