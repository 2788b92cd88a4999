"""Timing and memory: timed calls in interleaved rounds (medians, per-round ratios), peak memory of
a block, parameter sizes."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def process_peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class PeakMemory:
    """Peak memory of a block: CUDA max allocated (reset at entry), else the process RSS peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.megabytes = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.megabytes = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.megabytes = process_peak_rss_mb()
        return False


def parameter_megabytes(module: torch.nn.Module) -> float:
    unique = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() * p.element_size() for p in unique) / 2**20
