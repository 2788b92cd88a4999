"""The baseline the sampler is compared against: a sampler written the way the research code did it."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.logprob import is_euler_ancestral, step_is_stochastic
from editspecialists.diffusion.pipeline import decode_latents
from editspecialists.diffusion.sampler import Trajectories, initial_noise


def _naive_sigmas(scheduler, timestep) -> tuple[float, float]:
    """(sigma_from, sigma_to) read on the host, as the research code did (two host syncs)."""
    index = int((scheduler.timesteps == timestep).nonzero().item())
    return scheduler.sigmas[index].item(), scheduler.sigmas[index + 1].item()


def _naive_euler_step(scheduler, eps, timestep, sample, generator):
    """Euler-ancestral step with log-prob, one batch element at a time with host-side sigmas."""
    next_latents, log_probs = [], []
    for element in range(sample.shape[0]):
        sigma_from, sigma_to = _naive_sigmas(scheduler, timestep)
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = max(sigma_to**2 - sigma_up**2, 0.0) ** 0.5
        x = sample[element].float()
        mean = x + eps[element].float() * (sigma_down - sigma_from)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        prev = mean + sigma_up * noise
        if sigma_up > 0:
            log_density = (-((prev - mean) ** 2) / (2 * sigma_up**2) - math.log(sigma_up)
                           - 0.5 * math.log(2 * math.pi))
            log_probs.append(log_density.mean())
        else:
            log_probs.append(torch.zeros((), device=x.device))
        next_latents.append(prev)
    return torch.stack(next_latents), torch.stack(log_probs)


@torch.no_grad()
def naive_sample_edits(policy, scheduler, vae, cond: EditConditioning, *, nb_gen: int,
                       scales: GuidanceScales, generator: torch.Generator | None = None,
                       autocast=nullcontext) -> Trajectories:
    """The research code's sampler: each edit is a separate trajectory with its own 4-branch UNet
    call per step (B inputs, 4·B elements, style channels recomputed at every call), and the
    scheduler step loops over batch elements and reads sigmas on the host. Euler-ancestral only.
    Returns :class:`Trajectories` like :func:`sample_edits` (with other random draws).
    """
    if not is_euler_ancestral(scheduler):
        raise ValueError("the naive baseline implements the Euler-ancestral scheduler only")
    batch, _, height, width = cond.image_latents.shape
    latent_shape = (vae.config.latent_channels, height, width)
    start = initial_noise(batch, 1, latent_shape, scheduler, generator, cond.image_latents.device)
    trajectories, log_probs, images = [], [], []
    for _ in range(nb_gen):
        latents, path, scores = start, [start], []
        for timestep in scheduler.timesteps:
            sigma_from, _ = _naive_sigmas(scheduler, timestep)
            with autocast():
                eps = policy(latents / (sigma_from**2 + 1) ** 0.5, timestep, cond, scales)
            latents, log_prob = _naive_euler_step(scheduler, eps, timestep, latents, generator)
            path.append(latents)
            scores.append(log_prob)
        trajectories.append(torch.stack(path, dim=1))
        log_probs.append(torch.stack(scores, dim=1))
        images.append(decode_latents(vae, latents))
    return Trajectories(
        images=torch.stack(images, dim=1),
        latents=torch.stack(trajectories, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        timesteps=scheduler.timesteps,
        trainable=step_is_stochastic(scheduler),
        image_latents=cond.image_latents,
        style_latents=cond.style_latents,
        prompt_embeds=cond.prompt_embeds,
    )
