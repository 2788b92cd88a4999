"""The trainer's micro-step and optimizer step without accelerate, as the benchmark and the model
check time them."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.sampler import Trajectories
from editspecialists.training.trainer import micro_batch_loss, zero_loss


def training_micro_step(policy, scheduler, batch: Trajectories, step_index: torch.Tensor,
                        empty_embeds: torch.Tensor, *, scales: GuidanceScales, autocast=nullcontext,
                        eps: float = 0.1, beta: float = 0.1) -> torch.Tensor:
    """The trainer's micro-step without accelerate: :func:`~editspecialists.training.trainer.micro_batch_loss`,
    the skip decision (one host sync, as in the trainer) and backward
    (gradients accumulate). Returns the loss.

    ``batch`` holds b inputs with G edits each, scored at ``step_index`` (b,); edits are ranked
    in index order.
    """
    inputs, nb_gen = batch.log_probs.shape[:2]
    order = torch.arange(nb_gen, device=step_index.device).expand(inputs, nb_gen)
    has_preference = torch.ones(inputs, dtype=torch.bool, device=step_index.device)
    loss, _, usable = micro_batch_loss(policy, scheduler, batch, step_index, empty_embeds, order, has_preference,
                                       scales=scales, eta=1.0, autocast=autocast, eps=eps, beta=beta)
    if not bool(usable):
        loss = zero_loss(policy)
    loss.backward()
    return loss.detach()


def optimizer_step(policy, optimizer, max_grad_norm: float = 1.0) -> None:
    """End of an accumulation window: clip the gradient norm, step, clear the gradients."""
    torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def make_optimizer(policy) -> torch.optim.Optimizer:
    """AdamW with the trainer's defaults (docs/method.md §5)."""
    return torch.optim.AdamW(policy.trainable_parameters(), lr=3e-5, betas=(0.9, 0.999),
                             weight_decay=1e-4, eps=1e-8)
