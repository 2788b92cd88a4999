"""The models of one benchmark run, built by the trainer's :func:`build_edit_model`, with the
conditioning of the sampled batch."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from editspecialists.benchmarks.settings import BenchSettings
from editspecialists.benchmarks.sizes import SIZES
from editspecialists.demo.cache import default_cache_root
from editspecialists.diffusion.bundle import EditModel, EditModelSpec, build_edit_model
from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.precision import dtype_named


PROMPTS = ("turn the car into lego", "replace the car with lego", "make the car out of lego")


@dataclass
class BenchModels:
    """The edit model of one benchmark (built as the trainer builds it) and the sampled batch's
    conditioning."""

    model: EditModel
    cond: EditConditioning  # B inputs
    inputs: torch.Tensor  # (B, 3, H, W) in [0, 1]
    styles: torch.Tensor  # (B, 3, H, W) in [0, 1]

    @property
    def policy(self):
        return self.model.policy

    @property
    def scheduler(self):
        return self.model.scheduler

    @property
    def vae(self):
        return self.model.vae

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.frozen_dtype

    @property
    def scales(self) -> GuidanceScales:
        return self.model.scales

    def autocast(self):
        """The trainer's mixed-precision context (nothing in fp32)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def model_folder(settings: BenchSettings) -> Path:
    root = Path(settings.cache) if settings.cache else default_cache_root()
    return SIZES[settings.model].folder(root)


def load_models(settings: BenchSettings, spec: EditModelSpec | None = None) -> BenchModels:
    """The edit model of ``spec`` (default: the size's saved pipeline, the LoRA policy) built by
    :func:`build_edit_model` with frozen weights in ``dtype``, and the conditioning of random
    input/style images."""
    spec = replace(spec or EditModelSpec(str(model_folder(settings))), frozen_dtype=dtype_named(settings.dtype, "dtype"))
    model = build_edit_model(spec, settings.device)
    model.policy.eval()
    if settings.channels_last:
        model.policy.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
    model.set_timesteps(settings.steps, settings.resolution)
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (settings.batch, 3, settings.resolution, settings.resolution)
    inputs, styles = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(settings.batch)]
    cond = model.conditioning(inputs, styles, prompts)
    return BenchModels(model, cond, inputs.to(model.device), styles.to(model.device))
