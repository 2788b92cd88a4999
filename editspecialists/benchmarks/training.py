"""The training measurement: an accumulation window of micro-steps against the pure model time."""

from __future__ import annotations

import torch

from editspecialists.benchmarks.measuring import interleaved_rounds
from editspecialists.memory import PeakMemory
from editspecialists.training.micro_step import make_optimizer, optimizer_step, training_micro_step
from editspecialists.benchmarks.models import BenchModels
from editspecialists.benchmarks.raw_calls import UNetBatch, reference_forward, unet_forward_backward
from editspecialists.benchmarks.settings import BenchSettings
from editspecialists.diffusion.sampler import Trajectories


def window_steps(settings: BenchSettings, trajectories: Trajectories) -> list[torch.Tensor]:
    """The step indices ``(train_batch,)`` of each micro-step of one accumulation window, cycling
    through the trainable steps."""
    trainable = trajectories.trainable.nonzero().flatten()
    return [trainable[(torch.arange(settings.train_batch, device=trainable.device) + k) % len(trainable)]
            for k in range(settings.accumulation)]


def accumulation_window(models: BenchModels, settings: BenchSettings, trajectories: Trajectories):
    """A function running one accumulation window (``accumulation`` micro-steps of the trainer's
    step on the first ``train_batch`` inputs, then the optimizer step); the policy in train mode."""
    policy = models.policy
    batch = trajectories.select(torch.arange(settings.train_batch, device=trajectories.latents.device))
    steps = window_steps(settings, trajectories)
    optimizer = make_optimizer(policy)
    policy.train()

    def run():
        for step_index in steps:
            training_micro_step(policy, models.scheduler, batch, step_index, models.cond.empty_embeds,
                                scales=models.scales, autocast=models.autocast)
        optimizer_step(policy, optimizer)

    return run


def measure_training(models: BenchModels, settings: BenchSettings, trajectories: Trajectories) -> dict:
    """An accumulation window (``accumulation`` micro-steps, then the optimizer step) against pure
    model time (as many UNet forward+backward and reference forwards at the micro-step's shapes)."""
    policy, window = models.policy, settings.accumulation
    elements = 4 * settings.train_batch * settings.nb_gen
    first_steps = window_steps(settings, trajectories)[0]
    unet_inputs = UNetBatch.like(models, elements, trajectories.timesteps[first_steps].repeat_interleave(
        4 * settings.nb_gen))
    accumulation_window_run = accumulation_window(models, settings, trajectories)

    def forward_backward():
        with models.autocast():
            unet_forward_backward(policy, unet_inputs)

    def reference():
        with models.autocast():
            reference_forward(policy, unet_inputs)

    rounds = interleaved_rounds(
        {"window": accumulation_window_run, "forward_backward": forward_backward, "reference": reference},
        repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    with PeakMemory(models.device) as peak:
        accumulation_window_run()
    policy.eval()
    micro_step_seconds = rounds.median("window") / window
    return {
        "unet_batch": elements,
        "micro_step_seconds": micro_step_seconds,
        "unet_forward_backward_seconds": rounds.median("forward_backward"),
        "reference_forward_seconds": rounds.median("reference"),
        "transitions_per_s": settings.train_batch * settings.nb_gen / micro_step_seconds,
        "efficiency": rounds.median_ratio(lambda s: window * (s["forward_backward"] + s["reference"]),
                                          "window"),
        "peak_memory_mb": peak.megabytes,
    }
