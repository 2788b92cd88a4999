"""Patch embedders for the semantic score and the patch metrics.

Every embedder maps images ``(B, 3, H, W)`` in [0, 1] to ``(tokens (B, gh·gw, D) float32,
(gh, gw))``: one token per patch in row-major order, CLS (and any register tokens) dropped. The
whole image is resized to the embedder's square input (no crop), so a pixel mask of the image
maps onto the grid with :func:`editspecialists.rewards.semantic.downsample_mask`.

- :class:`DreamSimPatches`: DreamSim's ``dinov2_vitb14`` *patch* model (docs/method.md §4, the default),
  loaded by the ``dreamsim`` package (224 px, 16 × 16 patches, DreamSim's per-token embedding
  normalisation).
- :class:`HFPatches`: a transformers DINOv2 (``last_hidden_state``) or CLIP (vision tokens through
  ``post_layernorm`` and ``visual_projection``) loaded by id.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from editspecialists.rewards.images import check_images, normalise, resize

PatchTokens = tuple[torch.Tensor, tuple[int, int]]

DREAMSIM_VARIANT = "dinov2_vitb14"
DREAMSIM_CACHE = "~/.cache/dreamsim"
# What a DreamSim cache folder holds for the patch model of each variant that has one: DreamSim's
# backbone weights and LoRA adapter (its zip from GitHub), and the backbone's torch.hub repository
# and weights (fetched by torch.hub into the folder on first use).
DREAMSIM_FILES = {
    "dinov2_vitb14": ("dinov2_vitb14_pretrain.pth", "dinov2_vitb14_patch_lora/adapter_config.json",
                      "facebookresearch_dinov2_main/hubconf.py", "checkpoints/dinov2_vitb14_pretrain.pth"),
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "dino_vitb16_patch_lora/adapter_config.json",
                    "facebookresearch_dino_main/hubconf.py", "checkpoints/dino_vitbase16_pretrain.pth"),
}
DREAMSIM_FETCH = ("run bash download_repos.sh on a machine online (it fills models.dreamsim_cache; "
                  "--dreamsim-cache DIR fills another folder) or unset HF_HUB_OFFLINE")
DINOV2_GRID = 18  # docs/method.md §8: DINOv2 patch tokens on an 18 × 18 grid (252 px at patch 14)


@contextlib.contextmanager
def torch_hub_dir(folder: str):
    """Point torch.hub at ``folder`` and restore the previous hub directory afterwards."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(folder)
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


def cached_hub_repo(folder: Path, repo: str) -> Path | None:
    """The copy of the torch.hub repository ``owner/name[:ref]`` cached in ``folder`` (torch.hub's
    ``owner_name_ref`` layout; without a ref, ``main`` or ``master``), or None."""
    owner_name, _, ref = repo.partition(":")
    for branch in [ref] if ref else ["main", "master"]:
        candidate = folder / f"{owner_name.replace('/', '_')}_{branch.replace('/', '_')}"
        if (candidate / "hubconf.py").is_file():
            return candidate
    return None


@contextlib.contextmanager
def cached_torch_hub(folder: Path):
    """torch.hub pointed at ``folder`` (see :func:`torch_hub_dir`), where a repository cached in
    the folder loads from it with no network call (``torch.hub.load`` otherwise asks GitHub for a
    repository's default branch at every load, online or not)."""
    load = torch.hub.load

    def load_cached(repo_or_dir, model, *args, source="github", **kwargs):
        cached = cached_hub_repo(folder, repo_or_dir) if source == "github" else None
        if cached is None:
            return load(repo_or_dir, model, *args, source=source, **kwargs)
        return load(str(cached), model, *args, source="local", **kwargs)

    with torch_hub_dir(str(folder)):
        torch.hub.load = load_cached
        try:
            yield
        finally:
            torch.hub.load = load


def dreamsim_source(model_id: str, cache_dir: str | None = None) -> tuple[str, Path]:
    """(variant, folder) of a DreamSim id: an existing folder holds the ``dinov2_vitb14`` variant;
    a variant name is looked up in ``cache_dir`` (default ``~/.cache/dreamsim``)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return DREAMSIM_VARIANT, path
    return model_id, Path(cache_dir or DREAMSIM_CACHE).expanduser()


def missing_dreamsim_files(variant: str, folder: Path) -> list[str]:
    """The files of :data:`DREAMSIM_FILES` that ``folder`` lacks for ``variant``."""
    return [name for name in DREAMSIM_FILES[variant] if not (folder / name).is_file()]


class DreamSimPatches:
    """DreamSim patch tokens (``model.embed`` of the ``<variant>_patch`` model, CLS dropped)."""

    def __init__(self, model, image_size: int, device: torch.device, dtype: torch.dtype):
        self.model, self.image_size, self.device, self.dtype = model, image_size, device, dtype

    @classmethod
    def from_pretrained(cls, model_id: str = DREAMSIM_VARIANT, *, device="cpu", dtype: torch.dtype = torch.float32,
                        cache_dir: str | None = None) -> "DreamSimPatches":
        """Load through ``dreamsim.dreamsim(..., use_patch_model=True)``.

        ``model_id`` is a DreamSim variant with a patch model (a key of :data:`DREAMSIM_FILES`),
        read from ``cache_dir`` (default ``~/.cache/dreamsim``), or an existing DreamSim cache
        folder (then the ``dinov2_vitb14`` variant is read from it; see
        :mod:`editspecialists.demo.feedback_standins` for an offline tiny one). A complete folder
        loads without any network call; an incomplete one is filled by DreamSim's and torch.hub's
        downloads, unless ``HF_HUB_OFFLINE=1``: then the missing files are an error naming them.
        The process's torch.hub directory is restored afterwards.
        """
        from dreamsim import dreamsim
        from dreamsim.config import dreamsim_args
        from huggingface_hub import constants as hub_constants

        variant, folder = dreamsim_source(model_id, cache_dir)
        if variant not in DREAMSIM_FILES:
            raise ValueError(f"DreamSim variant {variant!r} has no patch model; use one of {', '.join(DREAMSIM_FILES)}")
        missing = missing_dreamsim_files(variant, folder)
        if missing and hub_constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(f"DreamSim {variant}: {folder} lacks {', '.join(missing)} and HF_HUB_OFFLINE=1 "
                                    f"forbids downloading them: {DREAMSIM_FETCH}")
        folder.mkdir(parents=True, exist_ok=True)
        # dreamsim prints "Using cached <folder>" when it has nothing to download
        quiet = contextlib.redirect_stdout(io.StringIO()) if not missing else contextlib.nullcontext()
        with cached_torch_hub(folder), warnings.catch_warnings(), quiet:
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
        per side; default 18 for DINOv2 (docs/method.md §8), the pretraining grid for CLIP (16 for ViT-L/14)."""
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
