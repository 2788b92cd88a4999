"""Short, seeded supervised training of the demo's tiny models on the CPU."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import Callable

import torch
from tqdm.auto import tqdm


@contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit(model, label: str, loss_fn: Callable[[int], torch.Tensor], *, steps: int, learning_rate: float,
        betas: tuple[float, float] = (0.9, 0.999), after_step: Callable[[], None] | None = None) -> list[float]:
    """Minimise ``loss_fn(step)`` over ``steps`` AdamW steps (no weight decay, gradients clipped to
    norm 1, :func:`cosine_schedule`) with a progress bar named ``label``, calling ``after_step()``
    after each, then freeze ``model`` in eval mode; returns the losses."""
    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=betas, weight_decay=0.0)
    schedule = cosine_schedule(optimizer, steps)
    losses = []
    # Off a terminal (CI logs, files) a bar line every 15 s rather than one per refresh.
    progress = tqdm(range(steps), desc=label, unit="step", leave=True,
                    mininterval=0.1 if sys.stderr.isatty() else 15)
    for step in progress:
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
        if (step + 1) % 25 == 0:
            progress.set_postfix(loss=f"{sum(losses[-25:]) / 25:.4f}", refresh=False)
    model.eval().requires_grad_(False)
    return losses


def cosine_schedule(optimizer, steps: int, warmup: int = 20):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of the learning rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightAverage:
    """Exponential moving average of a model's parameters: ``update()`` after each optimizer step
    (average ← decay · average + (1 − decay) · weights), ``copy_to()`` at the end writes the
    average into the model. The average of the last few hundred steps samples more cleanly than
    the last step's weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.parameters = list(model.parameters())
        self.average = [param.detach().clone() for param in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        for param, average in zip(self.parameters, self.average):
            average.lerp_(param.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self) -> None:
        for param, average in zip(self.parameters, self.average):
            param.copy_(average)
