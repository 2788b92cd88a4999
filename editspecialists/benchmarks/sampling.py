"""The sampling measurement: the sampler against the naive sampler and the pure model time."""

from __future__ import annotations

import torch

from editspecialists.benchmarks.measuring import interleaved_rounds
from editspecialists.memory import PeakMemory
from editspecialists.benchmarks.models import BenchModels
from editspecialists.benchmarks.naive_sampler import naive_sample_edits
from editspecialists.benchmarks.raw_calls import UNetBatch, unet_forward
from editspecialists.benchmarks.settings import BenchSettings
from editspecialists.diffusion.pipeline import decode_latents
from editspecialists.diffusion.sampler import Trajectories, sample_edits


def measure_sampling(models: BenchModels, settings: BenchSettings) -> tuple[dict, Trajectories]:
    """Sampler, naive sampler and pure model time (steps UNet forwards + the final decode).

    Returns the figures and one sampled batch of trajectories (for training and feedback).
    """
    policy, scheduler, vae = models.policy, models.scheduler, models.vae
    steps, edits = settings.steps, settings.batch * settings.nb_gen
    common = dict(nb_gen=settings.nb_gen, scales=models.scales, autocast=models.autocast)
    unet_inputs = UNetBatch.like(models, 4 * edits, scheduler.timesteps[0])
    final_latents = torch.randn(edits, vae.config.latent_channels, *models.cond.image_latents.shape[2:],
                                device=models.device)

    def generator():
        return torch.Generator(models.device).manual_seed(settings.seed)

    def unet_steps():
        with torch.no_grad(), models.autocast():
            for _ in range(steps):
                unet_forward(policy.unet, unet_inputs)

    rounds = interleaved_rounds({
        "sampler": lambda: sample_edits(policy, scheduler, vae, models.cond, generator=generator(), **common),
        "naive": lambda: naive_sample_edits(policy, scheduler, vae, models.cond, generator=generator(),
                                            **common),
        "unet_steps": unet_steps,
        "decode": lambda: decode_latents(vae, final_latents),
    }, repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    with PeakMemory(models.device) as peak:
        trajectories = sample_edits(policy, scheduler, vae, models.cond, generator=generator(), **common)
    sampler_seconds = rounds.median("sampler")
    figures = {
        "unet_batch": 4 * edits,
        "sampler_seconds": sampler_seconds,
        "naive_seconds": rounds.median("naive"),
        "unet_forward_seconds": rounds.median("unet_steps") / steps,
        "vae_decode_seconds": rounds.median("decode"),
        "steps_images_per_s": steps * edits / sampler_seconds,
        "naive_steps_images_per_s": steps * edits / rounds.median("naive"),
        "efficiency": rounds.median_ratio(lambda s: s["unet_steps"] + s["decode"], "sampler"),
        "speedup_vs_naive": rounds.median_ratio(lambda s: s["naive"], "sampler"),
        "peak_memory_mb": peak.megabytes,
    }
    return figures, trajectories
