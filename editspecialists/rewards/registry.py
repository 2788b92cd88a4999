"""The score registry: named per-edit scores with a direction, combined by the trainer.

A score is a factory ``factory(config, device) -> fn`` registered with :func:`register_score`;
``fn(batch: FeedbackBatch) -> (B, G)``. Adding a score is one function and one decorator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class ScoreSpec:
    name: str
    factory: Callable
    lower_is_better: bool


SCORES: dict[str, ScoreSpec] = {}


def register_score(name: str, *, lower_is_better: bool):
    """Decorator registering ``factory(config, device) -> fn(FeedbackBatch) -> (B, G)``."""

    def decorate(factory):
        SCORES[name] = ScoreSpec(name, factory, lower_is_better)
        return factory

    return decorate


def _check_images(name: str, images: torch.Tensor, ndim: int) -> None:
    if images.ndim != ndim or images.shape[-3] != 3:
        expected = "(B, G, 3, H, W)" if ndim == 5 else "(B, 3, H, W)"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(images.shape)}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name} must hold values in [0, 1], found [{low:.3g}, {high:.3g}]")


@dataclass
class FeedbackBatch:
    """Edits of B inputs with their input and style images, all in [0, 1].

    edits: (B, G, 3, H, W); inputs, styles: (B, 3, H, W). Masks are computed lazily, once per
    input / style image (not per edit), and shared by every score.
    """

    edits: torch.Tensor
    inputs: torch.Tensor
    styles: torch.Tensor
    mask_fn: Callable | None = None
    _masks: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        _check_images("edits", self.edits, 5)
        _check_images("inputs", self.inputs, 4)
        _check_images("styles", self.styles, 4)
        if self.edits.shape[0] != self.inputs.shape[0] or self.styles.shape[0] != self.inputs.shape[0]:
            raise ValueError(f"batch sizes differ: edits {self.edits.shape[0]}, inputs "
                             f"{self.inputs.shape[0]}, styles {self.styles.shape[0]}")
        if self.edits.shape[-2:] != self.inputs.shape[-2:] or self.styles.shape[-2:] != self.inputs.shape[-2:]:
            raise ValueError(f"image sizes differ: edits {tuple(self.edits.shape[-2:])}, inputs "
                             f"{tuple(self.inputs.shape[-2:])}, styles {tuple(self.styles.shape[-2:])}")

    @property
    def num_edits(self) -> int:
        return self.edits.shape[1]

    def flat_edits(self) -> torch.Tensor:
        """(B·G, 3, H, W), edits of input b at rows b·G .. b·G + G − 1."""
        return self.edits.flatten(0, 1)

    def per_edit(self, images: torch.Tensor) -> torch.Tensor:
        """Repeat per-input tensors (B, ...) to line up with :meth:`flat_edits` (B·G, ...)."""
        return images.repeat_interleave(self.num_edits, dim=0)

    def input_masks(self) -> torch.Tensor:
        """(B, H, W) bool masks of the object to edit in each input image."""
        return self._mask("inputs")

    def style_masks(self) -> torch.Tensor:
        """(B, H, W) bool masks of the concept in each style image."""
        return self._mask("styles")

    def _mask(self, role: str) -> torch.Tensor:
        if role not in self._masks:
            if self.mask_fn is None:
                raise ValueError("this FeedbackBatch has no mask predictor (needed by the score)")
            self._masks[role] = self.mask_fn(role, getattr(self, role))
        return self._masks[role]


class Scorer:
    """Computes every configured score of a batch: ``scorer(edits, inputs, styles) -> {name: (B, G)}``."""

    def __init__(self, score_fns: dict[str, Callable], mask_fn: Callable | None = None):
        self.score_fns = score_fns
        self.mask_fn = mask_fn

    @torch.inference_mode()
    def __call__(self, edits, inputs, styles) -> dict[str, torch.Tensor]:
        batch = FeedbackBatch(edits.float(), inputs.float(), styles.float(), self.mask_fn)
        return {name: fn(batch).float() for name, fn in self.score_fns.items()}


@register_score("brightness", lower_is_better=False)
def brightness_score(config, device):
    """Mean pixel value of each edit: a model-free reward for checking a setup in minutes."""
    return lambda batch: batch.edits.mean(dim=(2, 3, 4))


def build_scorer(config, device, accelerator=None) -> Scorer:
    """Load the models of the scores named in ``config.reward.weights`` (once per process)."""
    names = list(config.reward.weights)
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise ValueError(f"reward.weights names unknown scores {unknown}; registered: {sorted(SCORES)}")
    context = accelerator.main_process_first() if accelerator is not None else _nullcontext()
    with context:
        score_fns = {name: SCORES[name].factory(config, device) for name in names}
        mask_fn = _mask_fn(config, device) if any(getattr(fn, "needs_masks", False)
                                                   for fn in score_fns.values()) else None
    return Scorer(score_fns, mask_fn)


def _mask_fn(config, device):
    """role, images -> masks, with the Grounded-SAM2 predictor (or all ones for whole_frame)."""
    from editspecialists.rewards.masks import MaskPredictor

    names = {"inputs": config.input_name, "styles": config.style_name}
    if config.whole_frame:
        return lambda role, images: torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool,
                                               device=images.device)
    predictor = MaskPredictor.from_pretrained(
        config.models.detector, config.models.segmenter, device=device, dtype=reward_dtype(config),
        box_threshold=config.reward.box_threshold, text_threshold=config.reward.text_threshold)
    return lambda role, images: predictor(images, names[role])


def reward_dtype(config) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.reward.dtype]


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
