"""The settings of one benchmark run, filled from its model size's defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from editspecialists.benchmarks.sizes import SIZES
from editspecialists.precision import dtype_named


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark run. ``None`` workload fields take the model size's defaults."""

    model: str = "tiny"
    steps: int | None = None
    batch: int | None = None  # inputs per sampling batch
    nb_gen: int | None = None  # edits per input
    train_batch: int = 1  # inputs per training micro-step (each with its nb_gen edits)
    accumulation: int = 8  # micro-steps per optimizer step (train.gradient_accumulation_steps)
    resolution: int | None = None  # image side in pixels
    dtype: str = "fp32"  # autocast dtype, also the dtype of the frozen weights
    channels_last: bool = False  # UNet and VAE weights in channels-last memory format
    threads: int = 1  # torch CPU threads
    repeats: int | None = None  # timed rounds
    warmup: int = 1
    device: str = ""  # empty: cuda when available, else cpu
    seed: int = 0
    cache: str = ""  # model cache root; empty: editspecialists' default
    feedback: bool = True  # measure the feedback models

    def resolved(self) -> "BenchSettings":
        """Workload fields filled from :data:`SIZES`; device chosen; values checked."""
        if self.model not in SIZES:
            raise ValueError(f"model={self.model!r}: choose one of {sorted(SIZES)}")
        dtype_named(self.dtype, "dtype")
        size = SIZES[self.model]
        workload = ("steps", "batch", "nb_gen", "resolution", "repeats")
        defaults = {name: getattr(size, name) for name in workload}
        filled = {name: value if getattr(self, name) is None else getattr(self, name)
                  for name, value in defaults.items()}
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        settings = replace(self, device=device, **filled)
        counts = (settings.batch, settings.train_batch, settings.accumulation, settings.repeats)
        if settings.steps < 2 or settings.nb_gen < 2 or min(counts) < 1:
            raise ValueError("need steps >= 2, nb_gen >= 2 and batch, train_batch, accumulation, "
                             "repeats >= 1")
        if settings.train_batch > settings.batch:
            raise ValueError(f"train_batch {settings.train_batch} exceeds the sampled batch {settings.batch}")
        return settings
