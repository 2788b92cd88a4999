"""The models of one benchmark run, loaded through the production pipeline loader, with the
conditioning of the sampled batch."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from editspecialists.benchmarks.settings import BenchSettings
from editspecialists.benchmarks.sizes import SIZES
from editspecialists.demo.cache import default_cache_root
from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.pipeline import encode_images, encode_prompts, load_pipeline, place_encoders
from editspecialists.diffusion.policy import build_policy
from editspecialists.precision import dtype_named


PROMPTS = ("turn the car into lego", "replace the car with lego", "make the car out of lego")


@dataclass
class BenchModels:
    """The policy and frozen parts of one benchmark, with the sampled batch's conditioning."""

    pipe: object
    policy: object
    cond: EditConditioning  # B inputs
    inputs: torch.Tensor  # (B, 3, H, W) in [0, 1]
    styles: torch.Tensor  # (B, 3, H, W) in [0, 1]
    device: torch.device
    dtype: torch.dtype
    scales: GuidanceScales

    @property
    def scheduler(self):
        return self.pipe.scheduler

    def autocast(self):
        """The trainer's mixed-precision context (nothing in fp32)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def model_folder(settings: BenchSettings) -> Path:
    root = Path(settings.cache) if settings.cache else default_cache_root()
    return SIZES[settings.model].folder(root)


def load_models(settings: BenchSettings) -> BenchModels:
    """Load the size's saved pipeline through :func:`load_pipeline`, build the LoRA policy as the
    trainer does (frozen weights in ``dtype``) and encode random input/style images."""
    device, dtype = torch.device(settings.device), dtype_named(settings.dtype, "dtype")
    pipe = load_pipeline(str(model_folder(settings)))
    place_encoders(pipe, device, dtype)
    pipe.unet.to(device)
    policy = build_policy(pipe.unet, use_lora=True, frozen_dtype=dtype).eval()
    if settings.channels_last:
        policy.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.scheduler.set_timesteps(settings.steps, device=device)
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (settings.batch, 3, settings.resolution, settings.resolution)
    inputs, styles = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(settings.batch)]
    cond = EditConditioning(
        encode_images(pipe.vae, inputs).float(),
        encode_images(pipe.vae, styles).float(),
        encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts).float(),
        encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]).float(),
    )
    return BenchModels(pipe, policy, cond, inputs.to(device), styles.to(device), device, dtype,
                       GuidanceScales())
