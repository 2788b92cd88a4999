"""Metric families: each loads its frozen model(s) once and scores a batch of edits.

A family computes one or more metrics of docs/method.md §8 / §11 from an :class:`EvalBatch` and returns
``{metric name: (B,) float32 tensor}``. :data:`FAMILIES` registers them with their metric names
and whether they read masks; the evaluator then fills ``batch.input_masks`` / ``batch.style_masks``
first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import torch

from editspecialists.evaluation import metrics
from editspecialists.precision import cuda_autocast
from editspecialists.rewards.masks import MASK_KEYS

# Version of the metric definitions, written into every evaluation JSON: numbers of different
# versions are not comparable. 1 (no field in the JSON): `*_gen_input` location-wise, `clip_dir`
# of normalised features, `semantic_score` without reconstruction. 2: the paper's definitions
# (docs/method.md §11) under the paper's names, ours under `*_gen_input_aligned`, `clip_dir_normalized`,
# `semantic_score_norec`.
METRIC_DEFINITIONS = 2
# Metrics whose lower values are better (distances and errors); every other metric is a similarity
# or a preference score, higher better.
LOWER_IS_BETTER = frozenset({"semantic_score", "semantic_score_norec", "structural_score", "l2_out"})
# The weight of `l2_out` in `semantic_score`: the original's (and training's default) rec_lambda.
PAPER_REC_LAMBDA = 0.5
# ``patch_slicing``: "intended" computes the `*_gen_sty` / `*_gen_input` definitions (docs/method.md §8);
# "research_code" the numbers the original's evaluation printed, to set beside the paper's table.
PATCH_SLICINGS = ("intended", "research_code")
PATCH_ROLES = ("edit", "input", "style")
# The image whose patch tokens filled each role in the original's branches (docs/method.md §12): its CLIP
# branch embedded cat([input, edit, style]) and read the slices as [edit, style, input]; its DINOv2
# branch swapped edit and input; its DreamSim branch is as intended.
RESEARCH_CODE_ROLES = {
    "clipSim": {"edit": "input", "input": "style", "style": "edit"},
    "dinoSim": {"edit": "input", "input": "edit", "style": "style"},
    "dreamsimSim": {"edit": "edit", "input": "input", "style": "style"},
}


@dataclass
class EvalBatch:
    """Images ``(B, 3, H, W)`` in [0, 1], aligned pixel for pixel; masks bool ``(B, H, W)``."""

    edits: torch.Tensor
    inputs: torch.Tensor
    styles: torch.Tensor
    prompts: list[str]
    input_names: list[str]
    input_masks: torch.Tensor | None = None
    style_masks: torch.Tensor | None = None


@dataclass
class FamilySettings:
    """What the families are built from: model ids (``config.models``), device, dtype, options."""

    models: object
    device: torch.device
    dtype: torch.dtype
    structural_align: str = "none"
    patch_slicing: str = "intended"
    hps_autocast: bool = True
    _patch_embedders: dict = field(default_factory=dict)

    def patch_embedder(self, kind: str, model_id: str):
        """The rewards package's patch embedder, loaded once per (kind, id) and shared."""
        from editspecialists.rewards.features import load_patch_embedder

        key = (kind, model_id)
        if key not in self._patch_embedders:
            options = {"cache_dir": self.models.dreamsim_cache} if kind == "dreamsim" else {}
            self._patch_embedders[key] = load_patch_embedder(
                kind, model_id, device=self.device, dtype=self.dtype, **options
            )
        return self._patch_embedders[key]


class ReconstructionFamily:
    """``l2_out``: per-pixel MSE (mean over RGB) between edit and input outside the input mask."""

    def __init__(self, settings: FamilySettings):
        from editspecialists.rewards.semantic import reconstruction_outside

        self.reconstruction_outside = reconstruction_outside

    def __call__(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        return {"l2_out": self.reconstruction_outside(batch.edits, batch.inputs, batch.input_masks)}


class StructuralFamily:
    """``structural_score``: mean |depth(input) − depth(edit)| with Depth-Anything-V2 (docs/method.md §4)."""

    def __init__(self, settings: FamilySettings):
        from editspecialists.rewards.depth import DepthEstimator, structural_score

        self.depth = DepthEstimator.from_pretrained(settings.models.depth, device=settings.device, dtype=settings.dtype)
        self.structural_score = structural_score
        self.align = settings.structural_align

    def __call__(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        depth_input, depth_edit = self.depth(batch.inputs), self.depth(batch.edits)
        return {"structural_score": self.structural_score(depth_input, depth_edit, align=self.align)}


class SemanticFamily:
    """``semantic_score`` (paper): the training semantic score, DreamSim patch distance of the edit's
    input region to the style region + ``PAPER_REC_LAMBDA`` · ``l2_out``; ``semantic_score_norec``
    (ours): the patch distance alone."""

    def __init__(self, settings: FamilySettings):
        from editspecialists.rewards import semantic

        self.semantic = semantic
        self.embedder = settings.patch_embedder("dreamsim", settings.models.dreamsim)

    def __call__(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        edit_tokens, grid = self.embedder(batch.edits)
        style_tokens, style_grid = self.embedder(batch.styles)
        patches = (
            edit_tokens,
            style_tokens,
            self.semantic.downsample_mask(batch.input_masks, grid),
            self.semantic.downsample_mask(batch.style_masks, style_grid),
        )
        reconstruction = self.semantic.reconstruction_outside(batch.edits, batch.inputs, batch.input_masks)
        return {
            "semantic_score": self.semantic.semantic_score(*patches, reconstruction, PAPER_REC_LAMBDA),
            "semantic_score_norec": self.semantic.semantic_score(*patches),
        }


def patch_metric_names(prefix: str) -> tuple[str, str, str]:
    """``<prefix>_gen_sty``, ``<prefix>_gen_input`` (paper, all pairs), ``<prefix>_gen_input_aligned`` (ours)."""
    return f"{prefix}_gen_sty", f"{prefix}_gen_input", f"{prefix}_gen_input_aligned"


class PatchSimilarityFamily:
    """The :func:`patch_metric_names` metrics from one patch embedder (CLIP, DINOv2, DreamSim).

    With ``patch_slicing="research_code"`` the paper-named metrics take each role's tokens from the
    image the original's branch used (:data:`RESEARCH_CODE_ROLES`); the masks stay where they were
    (input mask on the edit role, style mask on the style role, background on both sides; the
    three images share one size, so one grid). ``*_gen_input_aligned`` (ours) always compares the
    edit with the input.
    """

    def __init__(self, settings: FamilySettings, prefix: str, kind: str, model_id: str):
        from editspecialists.rewards.semantic import downsample_mask

        if settings.patch_slicing not in PATCH_SLICINGS:
            raise ValueError(f"patch_slicing must be one of {list(PATCH_SLICINGS)}, got {settings.patch_slicing!r}")
        self.downsample_mask = downsample_mask
        self.metrics = patch_metric_names(prefix)
        self.embedder = settings.patch_embedder(kind, model_id)
        identity = {role: role for role in PATCH_ROLES}
        self.roles = RESEARCH_CODE_ROLES[prefix] if settings.patch_slicing == "research_code" else identity

    def __call__(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        (edit_tokens, grid), (input_tokens, _), (style_tokens, style_grid) = (
            self.embedder(images) for images in (batch.edits, batch.inputs, batch.styles))
        tokens = {"edit": edit_tokens, "input": input_tokens, "style": style_tokens}
        edit, source, style = (tokens[self.roles[role]] for role in PATCH_ROLES)
        edit_region = self.downsample_mask(batch.input_masks, grid)
        style_region = self.downsample_mask(batch.style_masks, style_grid)
        background = self.downsample_mask(~batch.input_masks, grid)
        gen_sty, gen_input, gen_input_aligned = self.metrics
        return {
            gen_sty: metrics.patch_similarity_to_style(edit, style, edit_region, style_region),
            gen_input: metrics.patch_similarity_to_background(edit, source, background),
            gen_input_aligned: metrics.patch_similarity_locationwise(edit_tokens, input_tokens, background),
        }


class ClipFamily:
    """``clip_txt``, ``clip_dir`` (paper: raw features) and ``clip_dir_normalized`` (ours) with the
    eval CLIP (ViT-L/14)."""

    def __init__(self, settings: FamilySettings):
        from editspecialists.evaluation.embedders import ClipEmbedder

        self.clip = ClipEmbedder.from_pretrained(settings.models.clip, device=settings.device, dtype=settings.dtype)

    def __call__(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        edit = self.clip.image_features(batch.edits)
        source = self.clip.image_features(batch.inputs)
        prompt = self.clip.text_features(batch.prompts)
        name = self.clip.text_features(batch.input_names)
        return {
            "clip_txt": metrics.clip_text_similarity(edit, prompt),
            "clip_dir": metrics.clip_direction_similarity(edit, source, prompt, name),
            "clip_dir_normalized": metrics.clip_direction_similarity_normalized(edit, source, prompt, name),
        }


class HpsFamily:
    """``hps_score``: HPSv2.1 (open_clip ViT-H-14 + the ``xswu/HPSv2`` checkpoint), under fp16
    autocast on CUDA as the original's scorer (``hps_autocast``)."""

    def __init__(self, settings: FamilySettings):
        from editspecialists.evaluation.embedders import OpenClipEmbedder

        models = settings.models
        self.hps = OpenClipEmbedder.from_checkpoint(
            models.hps_architecture, models.hps_checkpoint, device=settings.device, dtype=settings.dtype
        )
        self.autocast = partial(cuda_autocast, settings.hps_autocast, settings.device)

    def __call__(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        with self.autocast():
            images, texts = self.hps.embed_images(batch.edits), self.hps.embed_texts(batch.prompts)
        return {"hps_score": metrics.hps_score(images, texts)}


class PickScoreFamily:
    """``pick_score``: PickScore v1 (a CLIP-H fine-tuned on Pick-a-Pic preferences)."""

    def __init__(self, settings: FamilySettings):
        from editspecialists.evaluation.embedders import ClipEmbedder

        models = settings.models
        self.pick = ClipEmbedder.from_pretrained(
            models.pickscore, models.pickscore_processor, device=settings.device, dtype=settings.dtype
        )

    def __call__(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        images, texts = self.pick.embed_images(batch.edits), self.pick.embed_texts(batch.prompts)
        return {"pick_score": metrics.pick_score(images, texts, self.pick.logit_scale)}


class ImageRewardFamily:
    """``imgrew_score``: ImageReward v1.0 (native implementation, one prompt per image)."""

    def __init__(self, settings: FamilySettings):
        from editspecialists.evaluation.image_reward import ImageRewardScorer

        models = settings.models
        self.scorer = ImageRewardScorer.from_pretrained(
            models.imagereward, models.imagereward_tokenizer, device=settings.device, dtype=settings.dtype
        )

    def __call__(self, batch: EvalBatch) -> dict[str, torch.Tensor]:
        return {"imgrew_score": self.scorer(batch.edits, batch.prompts)}


@dataclass(frozen=True)
class FamilySpec:
    """A family's metric names, whether it reads masks, its constructor and the config keys of the
    models it loads (``models.clip``)."""

    metrics: tuple[str, ...]
    needs_masks: bool
    build: Callable[[FamilySettings], Callable[[EvalBatch], dict[str, torch.Tensor]]]
    model_keys: tuple[str, ...] = ()


def _patch_family(prefix: str, kind: str, model_key: str) -> FamilySpec:
    def build(settings: FamilySettings) -> PatchSimilarityFamily:
        return PatchSimilarityFamily(settings, prefix, kind, getattr(settings.models, model_key))

    return FamilySpec(patch_metric_names(prefix), True, build, (f"models.{model_key}",))


# The run order is this order.
FAMILIES: dict[str, FamilySpec] = {
    "semantic": FamilySpec(("semantic_score", "semantic_score_norec"), True, SemanticFamily, ("models.dreamsim",)),
    "structural": FamilySpec(("structural_score",), False, StructuralFamily, ("models.depth",)),
    "reconstruction": FamilySpec(("l2_out",), True, ReconstructionFamily),
    "clip": FamilySpec(("clip_txt", "clip_dir", "clip_dir_normalized"), False, ClipFamily, ("models.clip",)),
    "clip_patches": _patch_family("clipSim", "clip", "clip"),
    "dino_patches": _patch_family("dinoSim", "dinov2", "dino"),
    "dreamsim_patches": _patch_family("dreamsimSim", "dreamsim", "dreamsim"),
    "hps": FamilySpec(("hps_score",), False, HpsFamily, ("models.hps_architecture", "models.hps_checkpoint")),
    "pickscore": FamilySpec(("pick_score",), False, PickScoreFamily,
                            ("models.pickscore", "models.pickscore_processor")),
    "imagereward": FamilySpec(("imgrew_score",), False, ImageRewardFamily,
                              ("models.imagereward", "models.imagereward_tokenizer")),
}
ALL_METRICS: tuple[str, ...] = tuple(m for spec in FAMILIES.values() for m in spec.metrics)


def evaluation_model_keys(metrics: Sequence[str], whole_frame: bool) -> list[str]:
    """Config keys of the models an evaluation of ``metrics`` loads (the families holding them,
    and the mask models when one of them reads masks), in order, without repeats."""
    selected = set(metrics)
    families = [spec for spec in FAMILIES.values() if selected.intersection(spec.metrics)]
    keys = [key for spec in families for key in spec.model_keys]
    if not whole_frame and any(spec.needs_masks for spec in families):
        keys.extend(MASK_KEYS)
    return list(dict.fromkeys(keys))


def parse_metrics(selection: str | Sequence[str]) -> list[str]:
    """Metric names from a list or a comma-separated string; ``"all"`` selects every metric."""
    names = [s.strip() for s in selection.split(",")] if isinstance(selection, str) else [str(s).strip() for s in selection]
    names = [n for n in names if n]
    if names == ["all"]:
        return list(ALL_METRICS)
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(ALL_METRICS)}")
    if not names:
        raise ValueError("config.metrics selects no metric")
    return list(dict.fromkeys(names))
