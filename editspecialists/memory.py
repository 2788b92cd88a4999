"""Memory of a block and of models, as the benchmarks and the model check measure it: peak CUDA
allocation (else the process's peak resident set), parameter sizes."""

from __future__ import annotations

import resource
import sys

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
