"""A run stopped within an epoch (:mod:`editspecialists.stopping`): where it stopped, and the
epoch's samples that its checkpoint keeps so that the resumed run trains on them exactly as an
uninterrupted run would have."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from editspecialists.diffusion.sampler import Trajectories


def samples_file(process_index: int) -> str:
    """The file of one process's samples in a checkpoint saved within an epoch."""
    return f"samples_{process_index}.safetensors"


def save_samples(folder: Path, process_index: int, samples: "EpochSamples") -> None:
    """Write one process's samples into the checkpoint folder being written."""
    save_file(samples.tensors(), str(Path(folder) / samples_file(process_index)))


def load_samples(checkpoint: Path, process_index: int, device, inner: int, start: int) -> "EpochSamples":
    """One process's samples of a checkpoint saved within an epoch, on ``device``; training goes on
    at input ``start`` of inner epoch ``inner``."""
    tensors = load_file(str(Path(checkpoint) / samples_file(process_index)))
    return EpochSamples.from_tensors({name: value.to(device) for name, value in tensors.items()}, inner, start)


@dataclass
class EpochSamples:
    """One epoch's edits on this process, ranked, and where training goes on in them: inner epoch
    ``inner`` from input ``start`` of its shuffled order (0, 0 for a fresh epoch)."""

    trajectories: Trajectories
    order: torch.Tensor  # (B_local, G) edits best first
    has_preference: torch.Tensor  # (B_local,)
    inner: int = 0
    start: int = 0

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, on the CPU, by name (the trajectories' fields that are set, ``order``,
        ``has_preference``)."""
        named = {f"trajectories.{f.name}": getattr(self.trajectories, f.name) for f in fields(self.trajectories)
                 if getattr(self.trajectories, f.name) is not None}
        named.update(order=self.order, has_preference=self.has_preference)
        return {name: value.detach().to("cpu").contiguous() for name, value in named.items()}

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor], inner: int, start: int) -> "EpochSamples":
        prefix = "trajectories."
        trajectories = Trajectories(**{name[len(prefix):]: value for name, value in tensors.items()
                                       if name.startswith(prefix)})
        return EpochSamples(trajectories, tensors["order"], tensors["has_preference"], inner, start)


class StopTraining(Exception):
    """A signal asked the run to stop (:mod:`editspecialists.stopping`): raised at a safe point of
    ``epoch``, before its sampling (``inner`` None) or after an optimizer step, training going on at
    input ``start`` of inner epoch ``inner``."""

    def __init__(self, epoch: int, inner: int | None = None, start: int = 0):
        super().__init__(f"stop in epoch {epoch}")
        self.epoch, self.inner, self.start = epoch, inner, start
