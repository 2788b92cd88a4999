"""The feedback models a score needs (:class:`ModelNeed`), declared when it registers
(``register_score(..., models=...)``), and the built-in scores' needs: depth (:data:`DEPTH`), the
semantic backbone (:func:`semantic_needs`) and the mask models (:data:`MASKS`).

From the needs of a config's scores come the models a scorer loads, the model check's rows
(``scripts/check_models.py``), the ids ``download_repos.sh`` fetches and the offline pre-check of
training (:func:`~editspecialists.rewards.registry.model_needs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from editspecialists.rewards.depth import DepthEstimator
from editspecialists.rewards.features import load_patch_embedder
from editspecialists.rewards.masks import MASK_KEYS, MaskPredictor


def loading_only(model, image: torch.Tensor, config) -> None:
    """The model check of a model without one: loading it is the check."""


def run_on_image(model, image: torch.Tensor, config) -> None:
    """``model(image)``: a model called on images ``(B, 3, H, W)`` in [0, 1]."""
    model(image)


@dataclass(frozen=True)
class ModelNeed:
    """A feedback model a score runs.

    ``role`` names it (the model check's row); ``keys``: the dotted config keys of its ids
    (``"models.depth"``, or several for one loader); ``load(config, device, dtype)`` returns the
    loaded model, an object whose ``torch.nn.Module`` attributes and ``device`` ``reward.offload``
    moves (:func:`~editspecialists.rewards.registry.place_model`); ``check(model, image, config)``
    runs one image ``(1, 3, S, S)`` in [0, 1] through what the score calls (the model check).
    """

    role: str
    keys: tuple[str, ...]
    load: Callable[[object, torch.device, torch.dtype], object]
    check: Callable[[object, torch.Tensor, object], None] = loading_only

    def __post_init__(self):
        object.__setattr__(self, "keys", (self.keys,) if isinstance(self.keys, str) else tuple(self.keys))

    def load_frozen(self, config, device: torch.device, dtype: torch.dtype):
        """:attr:`load`, every ``torch.nn.Module`` attribute of the result frozen (no gradients:
        feedback models are never trained, and the model check counts their weights as frozen)."""
        model = self.load(config, device, dtype)
        for value in vars(model).values():
            if isinstance(value, torch.nn.Module):
                value.requires_grad_(False)
        return model


def load_depth(config, device: torch.device, dtype: torch.dtype) -> DepthEstimator:
    return DepthEstimator.from_pretrained(config.models.depth, device=device, dtype=dtype)


DEPTH = ModelNeed("depth", "models.depth", load_depth, run_on_image)

# The config key of each reward.semantic_backbone's model.
SEMANTIC_BACKBONE_KEYS = {"dreamsim": "models.dreamsim", "dinov2": "models.semantic_dinov2", "clip": "models.clip"}


def semantic_model_key(config) -> str:
    """Config key (``models.dreamsim``) of the model of ``config.reward.semantic_backbone``."""
    backbone = config.reward.semantic_backbone
    if backbone not in SEMANTIC_BACKBONE_KEYS:
        raise ValueError(f"reward.semantic_backbone must be one of {sorted(SEMANTIC_BACKBONE_KEYS)}, got {backbone!r}")
    return SEMANTIC_BACKBONE_KEYS[backbone]


def semantic_model_id(config) -> tuple[str, dict]:
    """Model id and loading keywords of ``config.reward.semantic_backbone``."""
    key = semantic_model_key(config)
    kwargs = {"cache_dir": config.models.dreamsim_cache} if key == "models.dreamsim" else {}
    return config.models[key.split(".")[1]], kwargs


def load_semantic(config, device: torch.device, dtype: torch.dtype):
    """The patch embedder of ``reward.semantic_backbone``."""
    model_id, kwargs = semantic_model_id(config)
    return load_patch_embedder(config.reward.semantic_backbone, model_id, device=device, dtype=dtype, **kwargs)


def semantic_needs(config) -> list[ModelNeed]:
    """The semantic score's model: the patch embedder of ``reward.semantic_backbone``."""
    return [ModelNeed("semantic", semantic_model_key(config), load_semantic, run_on_image)]


def load_masks(config, device: torch.device, dtype: torch.dtype) -> MaskPredictor:
    models, reward = config.models, config.reward
    return MaskPredictor.from_pretrained(models.detector, models.segmenter, device=device, dtype=dtype,
                                         box_threshold=reward.box_threshold, text_threshold=reward.text_threshold)


def check_masks(predictor: MaskPredictor, image: torch.Tensor, config) -> None:
    """Masks of the input name (detection), and the segmenter on the central box of the image
    (it runs whether or not the detector found a box)."""
    side = image.shape[-1]
    predictor(image, config.input_name)
    with torch.inference_mode():
        predictor.segment(image, [torch.tensor([[side / 4, side / 4, 3 * side / 4, 3 * side / 4]])])


# Grounded-SAM2: what every score registered with needs_masks reads (unless config.whole_frame).
MASKS = ModelNeed("masks", MASK_KEYS, load_masks, check_masks)
