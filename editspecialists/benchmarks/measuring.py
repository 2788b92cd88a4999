"""Timing: timed calls in interleaved rounds (medians, per-round ratios). Memory: :mod:`editspecialists.memory`."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from editspecialists.memory import synchronize


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by ``fn()``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class Rounds:
    """Seconds of each timed function per round: ``samples[name][round]``."""

    def __init__(self, samples: dict[str, list[float]]):
        self.samples = samples

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def median_ratio(self, numerator: Callable[[dict], float], denominator: str) -> float:
        """Median over rounds of ``numerator(seconds of the round) / seconds[denominator]``.

        Each ratio compares timings of the same round, so load that drifts between rounds
        cancels out.
        """
        names = list(self.samples)
        ratios = []
        for values in zip(*self.samples.values()):
            seconds = dict(zip(names, values))
            ratios.append(numerator(seconds) / seconds[denominator])
        return statistics.median(ratios)


def interleaved_rounds(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int,
                       device: torch.device) -> Rounds:
    """Time every function once per round, in turn, for ``warmup`` untimed and ``repeats`` timed rounds."""
    samples = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            seconds = timed(fn, device)
            if round_index >= warmup:
                samples[name].append(seconds)
    return Rounds(samples)
