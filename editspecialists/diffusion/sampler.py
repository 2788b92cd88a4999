"""Sampling edit trajectories with log-probabilities, and recomputing them for training.

Both functions reach the model through :class:`VisualPromptPolicy` (4-branch guidance) and the
step functions of :mod:`editspecialists.diffusion.logprob`, so the log-probability that
training recomputes is by construction the one sampling recorded. ``research_code_compat``
reproduces the research code's two departures from that (its sampler's lagged Euler input scale,
its training forward's style attention from the noisy latent), so the two then differ as there.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.config_keys import parse_sde_window
from editspecialists.diffusion.logprob import StepTable, step_is_stochastic, windowed_eta
from editspecialists.diffusion.pipeline import decode_latents


@dataclass
class Trajectories:
    """nb_gen sampled edits for each of B inputs over T denoising steps.

    images: (B, G, 3, H, W) decoded edits in [0, 1].
    latents: (B, G, T + 1, 4, h, w) fp32; step t goes from ``latents[:, :, t]`` to ``[:, :, t+1]``.
    log_probs: (B, G, T) fp32 log p(x_{t+1} | x_t) under the sampling policy.
    timesteps: (T,) the scheduler's timesteps.
    trainable: (T,) bool, False for deterministic steps (zero noise).
    image_latents, style_latents: (B, C, h, w); prompt_embeds: (B, L, D); pooled_embeds: (B, P)
    or None (the :class:`EditConditioning` they come from).
    """

    images: torch.Tensor
    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    trainable: torch.Tensor
    image_latents: torch.Tensor
    style_latents: torch.Tensor
    prompt_embeds: torch.Tensor
    pooled_embeds: torch.Tensor | None = None

    PER_INPUT = ("images", "latents", "log_probs", "image_latents", "style_latents", "prompt_embeds",
                 "pooled_embeds")

    def select(self, index: torch.Tensor) -> "Trajectories":
        """The trajectories of the inputs at ``index`` (a (b,) long tensor), shared fields kept."""
        return Trajectories(**{
            f.name: getattr(self, f.name)[index] if self.is_per_input(f.name) else getattr(self, f.name)
            for f in fields(self)
        })

    @staticmethod
    def cat(parts: list["Trajectories"]) -> "Trajectories":
        """Concatenate along the input dimension (shared fields taken from the first part)."""
        first = parts[0]
        return Trajectories(**{
            f.name: torch.cat([getattr(p, f.name) for p in parts]) if first.is_per_input(f.name)
            else getattr(first, f.name)
            for f in fields(first)
        })

    def is_per_input(self, name: str) -> bool:
        """Whether field ``name`` holds one entry per input (not None, not shared)."""
        return name in self.PER_INPUT and getattr(self, name) is not None

    def conditioning(self, empty_embeds: torch.Tensor | None) -> EditConditioning:
        return EditConditioning(self.image_latents, self.style_latents, self.prompt_embeds, empty_embeds,
                                pooled_embeds=self.pooled_embeds)


def sampling_eta(sample) -> float | torch.Tensor:
    """The noise scale the sampler and training use, from a config's ``sample`` section: ``eta``
    on every step, or (``sde_window`` "start:stop") on those steps only, a (T,) tensor."""
    return windowed_eta(sample.num_steps, sample.eta, parse_sde_window(sample.sde_window))


def initial_noise(batch: int, nb_gen: int, latent_shape, scheduler, generator, device) -> torch.Tensor:
    """(B·G, 4, h, w) starting latents: one draw per input, shared by its nb_gen edits.

    ``generator`` may be one generator or a list of B (one per input, for per-image seeds).
    """
    noise = randn_tensor((batch, 1, *latent_shape), generator=generator, device=device,
                         dtype=torch.float32)
    noise = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching starts at pure noise: none
    return noise.expand(-1, nb_gen, *latent_shape).reshape(batch * nb_gen, *latent_shape)


def step_invariant_conditioning(policy, cond: EditConditioning):
    """What the policy's forward takes in place of ``cond`` at every step of a trajectory: its
    precomputed branch inputs when it offers them (``branch_inputs``; computed by its forward with
    no latents, through any wrapper), else ``cond`` itself."""
    if getattr(getattr(policy, "module", policy), "branch_inputs", None) is None:
        return cond
    return policy(None, None, cond, None)


@torch.no_grad()
def sample_edits(policy, scheduler, vae, cond: EditConditioning, *, nb_gen: int, scales: GuidanceScales,
                 eta: float = 1.0, generator: torch.Generator | None = None,
                 autocast=nullcontext, research_code_compat: bool = False,
                 on_step: Callable[[int], None] | None = None) -> Trajectories:
    """Sample nb_gen edits per input with one batched UNet call (4·G·B elements) per step.

    The step-invariant UNet inputs (style channels, image channels, text states) and the
    schedule's coefficients (:class:`StepTable`) are computed once per call, not once per step.

    Args:
        policy: the (possibly DDP-wrapped) :class:`VisualPromptPolicy`.
        scheduler: Euler-ancestral, DDIM or flow-matching scheduler after ``set_timesteps``.
        vae: decodes the final latents.
        cond: conditioning of the B inputs (image/style latents, prompt embeds).
        generator: drives the initial noise and every step's noise; a list of B generators makes
            each input's edits independent of the rest of the batch.
        autocast: a context-manager factory (e.g. ``accelerator.autocast``) for the UNet calls.
        research_code_compat: sample as the research code did, scaling Euler-ancestral step i's
            model input with step i − 1's sigma (:meth:`StepTable.of`'s ``lagged_input_scale``).
        on_step: called with each step's index once the step is done (a progress bar's update).
    """
    batch, _, height, width = cond.image_latents.shape
    device = cond.image_latents.device
    latent_shape = (vae.config.latent_channels, height, width)
    latents = initial_noise(batch, nb_gen, latent_shape, scheduler, generator, device)
    edit_cond = cond.repeat_interleave(nb_gen)
    if isinstance(generator, list):
        generator = [g for g in generator for _ in range(nb_gen)]
    timesteps = scheduler.timesteps.to(device)
    table = StepTable.of(scheduler, device, eta=eta, lagged_input_scale=research_code_compat)
    with autocast():
        step_cond = step_invariant_conditioning(policy, edit_cond)
    all_latents, all_log_probs = [latents], []
    for index, timestep in enumerate(timesteps):
        with autocast():
            eps = policy(table.scale_input(latents, index), timestep, step_cond, scales)
        latents, log_prob = table.step(index, eps, latents, generator=generator)
        all_latents.append(latents)
        all_log_probs.append(log_prob)
        if on_step is not None:
            on_step(index)
    images = decode_latents(vae, latents)
    return Trajectories(
        images=images.reshape(batch, nb_gen, *images.shape[1:]),
        latents=torch.stack(all_latents, dim=1).reshape(batch, nb_gen, len(timesteps) + 1, *latent_shape),
        log_probs=torch.stack(all_log_probs, dim=1).reshape(batch, nb_gen, len(timesteps)),
        timesteps=timesteps,
        trainable=step_is_stochastic(scheduler, eta=eta).to(device),
        image_latents=cond.image_latents,
        style_latents=cond.style_latents,
        prompt_embeds=cond.prompt_embeds,
        pooled_embeds=cond.pooled_embeds,
    )


def transition_log_probs(policy, scheduler, trajectories: Trajectories, step_index: torch.Tensor,
                         empty_embeds: torch.Tensor, *, scales: GuidanceScales, eta: float = 1.0,
                         reference: bool = False, autocast=nullcontext,
                         research_code_compat: bool = False) -> torch.Tensor:
    """Log-probs (b, G) of stored transitions at per-input step indices ``step_index`` (b,).

    Every edit of input i is scored at step ``step_index[i]``. With ``reference=True`` the
    frozen initial model scores them (no gradient); otherwise gradients flow to the policy.
    ``policy`` may be DDP-wrapped: its forward is what gets called. ``research_code_compat``: the
    research code's training forward, whose style module attended from the (unscaled) noisy
    latent instead of the input image's latent.
    """
    batch, nb_gen = trajectories.log_probs.shape[:2]
    gather = step_index.view(batch, 1, 1, *([1] * 3)).expand(batch, nb_gen, 1, *trajectories.latents.shape[3:])
    before = trajectories.latents.gather(2, gather).flatten(0, 2)
    after = trajectories.latents.gather(2, gather + 1).flatten(0, 2)
    timesteps = trajectories.timesteps[step_index].repeat_interleave(nb_gen)
    cond = trajectories.conditioning(empty_embeds).repeat_interleave(nb_gen)
    if research_code_compat:
        cond = replace(cond, style_query_latents=before)
    unwrapped = getattr(policy, "module", policy)
    context = unwrapped.reference() if reference else nullcontext()
    grad = torch.no_grad() if reference else nullcontext()
    table, steps = StepTable.of(scheduler, before.device, eta=eta), step_index.repeat_interleave(nb_gen)
    with context, grad, autocast():
        eps = policy(table.scale_input(before, steps), timesteps, cond, scales)
    _, log_prob = table.step(steps, eps, before, prev_sample=after)
    return log_prob.view(batch, nb_gen)
