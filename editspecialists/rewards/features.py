"""Patch embedders for the semantic score and the patch metrics.

Every embedder maps images ``(B, 3, H, W)`` in [0, 1] to ``(tokens (B, gh·gw, D) float32,
(gh, gw))``: one token per patch in row-major order, CLS (and any register tokens) dropped. The
whole image is resized to the embedder's square input (no crop), so a pixel mask of the image
maps onto the grid with :func:`editspecialists.rewards.semantic.downsample_mask`.

- :class:`DreamSimPatches`: DreamSim's ``dinov2_vitb14`` *patch* model (SPEC §4, the default),
  loaded by the ``dreamsim`` package (224 px, 16 × 16 patches, DreamSim's per-token embedding
  normalisation).
- :class:`HFPatches`: a transformers DINOv2 (``last_hidden_state``) or CLIP (vision tokens through
  ``post_layernorm`` and ``visual_projection``) loaded by id.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from editspecialists.rewards.images import check_images, normalise, resize

PatchTokens = tuple[torch.Tensor, tuple[int, int]]

DREAMSIM_VARIANT = "dinov2_vitb14"
DREAMSIM_CACHE = "~/.cache/dreamsim"
DINOV2_GRID = 18  # SPEC §8: DINOv2 patch tokens on an 18 × 18 grid (252 px at patch 14)


@contextlib.contextmanager
def torch_hub_dir(folder: str):
    """Point torch.hub at ``folder`` and restore the previous hub directory afterwards."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(folder)
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


class DreamSimPatches:
    """DreamSim patch tokens (``model.embed`` of the ``<variant>_patch`` model, CLS dropped)."""

    def __init__(self, model, image_size: int, device: torch.device, dtype: torch.dtype):
        self.model, self.image_size, self.device, self.dtype = model, image_size, device, dtype

    @classmethod
    def from_pretrained(cls, model_id: str = DREAMSIM_VARIANT, *, device="cpu", dtype: torch.dtype = torch.float32,
                        cache_dir: str | None = None) -> "DreamSimPatches":
        """Load through ``dreamsim.dreamsim(..., use_patch_model=True)``.

        ``model_id`` is a DreamSim variant (``"dinov2_vitb14"``), whose weights are downloaded
        into ``cache_dir`` (default ``~/.cache/dreamsim``) on first use, or an existing DreamSim
        cache folder (then the ``dinov2_vitb14`` variant is read from it; see
        :mod:`editspecialists.demo.feedback_standins` for an offline tiny one). DreamSim resolves
        its backbone through torch.hub inside the cache folder; the process's torch.hub directory
        is restored afterwards.
        """
        from dreamsim import dreamsim
        from dreamsim.config import dreamsim_args

        if Path(model_id).expanduser().is_dir():
            variant, folder = DREAMSIM_VARIANT, Path(model_id).expanduser()
        else:
            variant, folder = model_id, Path(cache_dir or DREAMSIM_CACHE).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        with torch_hub_dir(str(folder)), warnings.catch_warnings():
            # dreamsim wraps its model in PEFT, then loads the adapter into it: PEFT warns, harmlessly
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            model, _ = dreamsim(pretrained=True, device=str(device), cache_dir=str(folder),
                                dreamsim_type=variant, use_patch_model=True)
        model = model.to(device=device, dtype=dtype).eval()
        return cls(model, dreamsim_args["img_size"], torch.device(device), dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> PatchTokens:
        check_images(images)
        return self.tokens(images)

    def tokens(self, images: torch.Tensor) -> PatchTokens:
        """What ``__call__`` returns, with autograd."""
        pixels = resize(images.to(self.device, torch.float32), (self.image_size, self.image_size))
        embeddings = self.model.embed(pixels.to(self.dtype))  # (B, 1 + gh·gw, D), CLS first
        grid = tuple(self.model.extractor_list[0].num_patches)
        return embeddings[:, 1:].float(), grid


class Dinov2Tokens(torch.nn.Module):
    """A DINOv2 model returning its final-layer (layer-normed) tokens ``(B, T, D)``."""

    def __init__(self, dinov2_model):
        super().__init__()
        self.dinov2 = dinov2_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.dinov2(pixel_values=pixel_values).last_hidden_state


class ClipVisionProjection(torch.nn.Module):
    """A CLIP vision tower with its projection: tokens ``(B, T, projection_dim)``."""

    def __init__(self, clip_model):
        super().__init__()
        self.vision_model, self.visual_projection = clip_model.vision_model, clip_model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
        return self.visual_projection(self.vision_model.post_layernorm(hidden))


class HFPatches:
    """Patch tokens of a transformers DINOv2 or CLIP model on a ``grid × grid`` patch grid."""

    def __init__(self, model: torch.nn.Module, grid: int, patch_size: int, mean, std,
                 device: torch.device, dtype: torch.dtype):
        self.model, self.grid, self.patch_size = model, grid, patch_size
        self.mean, self.std, self.device, self.dtype = mean, std, device, dtype

    @classmethod
    def from_pretrained(cls, model_id: str, *, device="cpu", dtype: torch.dtype = torch.float32,
                        grid: int | None = None) -> "HFPatches":
        """The architecture comes from the model's config (``dinov2`` or ``clip``). ``grid``: patches
        per side; default 18 for DINOv2 (SPEC §8), the pretraining grid for CLIP (16 for ViT-L/14)."""
        from transformers import AutoConfig, AutoImageProcessor, CLIPModel, Dinov2Model

        config = AutoConfig.from_pretrained(model_id)
        processor = AutoImageProcessor.from_pretrained(model_id)
        if config.model_type == "dinov2":
            model = Dinov2Tokens(Dinov2Model.from_pretrained(model_id, dtype=dtype))
            patch_size, default_grid = config.patch_size, DINOV2_GRID
        elif config.model_type == "clip":
            model = ClipVisionProjection(CLIPModel.from_pretrained(model_id, dtype=dtype))
            patch_size = config.vision_config.patch_size
            default_grid = config.vision_config.image_size // patch_size
        else:
            raise ValueError(f"{model_id}: patch embedder needs a dinov2 or clip model, got {config.model_type!r}")
        model = model.to(device).eval()
        return cls(model, grid or default_grid, patch_size, processor.image_mean, processor.image_std,
                   torch.device(device), dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> PatchTokens:
        check_images(images)
        return self.tokens(images)

    def tokens(self, images: torch.Tensor) -> PatchTokens:
        """What ``__call__`` returns, with autograd."""
        side = self.grid * self.patch_size
        pixels = normalise(resize(images.to(self.device, torch.float32), (side, side)), self.mean, self.std)
        tokens = self.model(pixels.to(self.dtype))
        return tokens[:, -self.grid * self.grid :].float(), (self.grid, self.grid)


EMBEDDERS = {"dreamsim": DreamSimPatches, "dinov2": HFPatches, "clip": HFPatches}


def load_patch_embedder(kind: str, model_id: str, *, device="cpu", dtype: torch.dtype = torch.float32, **kwargs):
    """``kind``: ``"dreamsim"`` (:class:`DreamSimPatches`), ``"dinov2"`` or ``"clip"`` (:class:`HFPatches`);
    extra keywords go to its ``from_pretrained`` (``cache_dir`` for DreamSim, ``grid`` for HF)."""
    if kind not in EMBEDDERS:
        raise ValueError(f"unknown patch embedder {kind!r}; known: {', '.join(EMBEDDERS)}")
    return EMBEDDERS[kind].from_pretrained(model_id, device=device, dtype=dtype, **kwargs)
