"""Named feedback scores, combined by the trainer with weights and directions (``config.reward``).

A score is a factory ``factory(config, device, *models) -> fn`` registered with
:func:`register_score`; ``fn(batch: FeedbackBatch) -> (B, G)`` scores every edit. The trainer
standardises each score, signs it by ``SCORES[name].lower_is_better`` and weights it. Adding a score::

    @register_score("saturation", lower_is_better=False)
    def saturation(config, device):
        def score(batch: FeedbackBatch) -> torch.Tensor:
            edits = batch.edits  # (B, G, 3, H, W)
            return (edits.amax(dim=2) - edits.amin(dim=2)).mean(dim=(2, 3))
        return score

then name it in ``config.reward.weights``. Scores that read ``batch.input_masks`` /
``batch.style_masks`` register with ``needs_masks=True`` so the mask models get loaded. A score
that runs models declares them, ``models=[ModelNeed(...)]`` (:mod:`~editspecialists.rewards.needs`),
and its factory receives them loaded, in that order, after ``device``: the scorer loads each once,
and the model check, ``download_repos.sh`` and training's offline pre-check know its ids.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch

from editspecialists.precision import dtype_named
from editspecialists.rewards import semantic
from editspecialists.rewards.depth import structural_score
from editspecialists.rewards.images import check_images
from editspecialists.rewards.constants import ImageKey, PerImageConstants
from editspecialists.rewards.masks import MASK_FALLBACKS, Masks, MaskPredictor, whole_frame_masks
from editspecialists.rewards.needs import DEPTH, MASKS, ModelNeed, semantic_model_id, semantic_needs

MaskFn = Callable[[torch.Tensor, str], Masks]  # images (B, 3, H, W), name → Masks (bool (B, H, W), ...)


def whole_frame_mask_fn(images: torch.Tensor, name: str) -> Masks:
    return Masks(whole_frame_masks(images), torch.zeros(len(images), dtype=torch.bool))


@dataclass(eq=False)
class FeedbackBatch:
    """Edits ``(B, G, 3, H, W)`` of inputs ``(B, 3, H, W)`` with style images ``(B, 3, H', W')``,
    all float in [0, 1] on one device.

    ``input_masks`` / ``style_masks`` (bool ``(B, H, W)`` / ``(B, H', W')``) are computed on first
    access with ``mask_fn`` (default: whole image) and cached: once per input and style image,
    shared by every score and every edit of the batch; ``mask_fallbacks`` records, per name, which
    images' masks are the fallback's.

    With ``constants`` and the images' keys (:mod:`~editspecialists.rewards.constants`), what a
    score computes from the inputs or styles alone (:meth:`input_constant`, :meth:`style_constant`,
    the masks) is computed once per image for the whole run.
    """

    edits: torch.Tensor
    inputs: torch.Tensor
    styles: torch.Tensor
    input_name: str = ""
    style_name: str = ""
    mask_fn: MaskFn = whole_frame_mask_fn
    input_keys: list[ImageKey] | None = None
    style_keys: list[ImageKey] | None = None
    constants: PerImageConstants | None = None
    mask_fallbacks: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self):
        check_images(self.edits, "edits", ndim=5)
        check_images(self.inputs, "inputs")
        check_images(self.styles, "styles")
        batch = self.edits.shape[0]
        for name, tensor in (("inputs", self.inputs), ("styles", self.styles)):
            if tensor.shape[0] != batch:
                raise ValueError(f"{name} holds {tensor.shape[0]} images but edits are for {batch} inputs")
        if self.edits.shape[-2:] != self.inputs.shape[-2:]:
            raise ValueError(f"edits are {tuple(self.edits.shape[-2:])} pixels but inputs are "
                             f"{tuple(self.inputs.shape[-2:])}: edits must align with their inputs")

    @property
    def num_edits(self) -> int:
        """``G``, edits per input."""
        return self.edits.shape[1]

    @property
    def flat_edits(self) -> torch.Tensor:
        """Edits as one batch ``(B·G, 3, H, W)``, input-major."""
        return self.edits.flatten(0, 1)

    def per_edit(self, tensor: torch.Tensor) -> torch.Tensor:
        """Repeat a per-input tensor ``(B, ...)`` for each edit: ``(B·G, ...)`` aligned with :attr:`flat_edits`."""
        return tensor.repeat_interleave(self.num_edits, dim=0)

    def input_constant(self, kind: tuple, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``compute(inputs)`` ``(B, ...)``, once per input image of the run when constants are kept."""
        return self._constant(kind, self.inputs, self.input_keys, lambda images: (compute(images),))[0]

    def style_constant(self, kind: tuple, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``compute(styles)`` ``(B, ...)``, once per style image of the run when constants are kept."""
        return self._constant(kind, self.styles, self.style_keys, lambda images: (compute(images),))[0]

    def _constant(self, kind: tuple, images: torch.Tensor, keys, compute):
        if self.constants is None or keys is None:
            return compute(images)
        return self.constants.lookup(kind, keys, images, compute)

    @cached_property
    def input_masks(self) -> torch.Tensor:
        return self._masks(self.inputs, self.input_keys, self.input_name)

    @cached_property
    def style_masks(self) -> torch.Tensor:
        return self._masks(self.styles, self.style_keys, self.style_name)

    def _masks(self, images: torch.Tensor, keys, name: str) -> torch.Tensor:
        def compute(chunk):
            masks = self.mask_fn(chunk, name)
            return masks.masks, masks.fallback.to(chunk.device)

        masks, fallback = self._constant(("mask", name), images, keys, compute)
        self.mask_fallbacks.setdefault(name, []).append(fallback.cpu())
        return masks


ScoreFn = Callable[[FeedbackBatch], torch.Tensor]


def fixed_needs(needs: list[ModelNeed]) -> Callable[[object], list[ModelNeed]]:
    """``models(config)`` of a score whose models do not depend on the config."""
    return lambda config: list(needs)


class LoadedModels:
    """The feedback models of one scorer, each loaded once, on ``device`` in ``reward.dtype``:
    ``loaded`` maps a need's ``(role, keys)`` to its model."""

    def __init__(self, config, device: torch.device):
        self.config, self.device, self.dtype = config, torch.device(device), reward_dtype(config)
        self.loaded: dict[tuple[str, tuple[str, ...]], object] = {}

    def get(self, need: ModelNeed):
        """The model of ``need``, loaded the first time it is asked for."""
        key = (need.role, need.keys)
        if key not in self.loaded:
            self.loaded[key] = need.load_frozen(self.config, self.device, self.dtype)
        return self.loaded[key]


@dataclass(frozen=True)
class ScoreSpec:
    """A registered score: its direction, whether it reads masks, its factory and ``models(config)``,
    the feedback models the factory receives (besides the mask models of ``needs_masks``)."""

    name: str
    lower_is_better: bool
    needs_masks: bool
    factory: Callable[..., ScoreFn]
    models: Callable[[object], list[ModelNeed]] = fixed_needs([])

    def make(self, config, device: torch.device, models: LoadedModels) -> ScoreFn:
        """``factory(config, device, *its models)``, each model taken from (or loaded into) ``models``."""
        return self.factory(config, device, *(models.get(need) for need in self.models(config)))


SCORES: dict[str, ScoreSpec] = {}


def register_score(name: str, lower_is_better: bool, needs_masks: bool = False,
                   models: list[ModelNeed] | Callable[[object], list[ModelNeed]] = ()):
    """Decorator registering ``factory(config, device, *models) -> fn`` as score ``name``;
    ``models``: the feedback models it runs, a list of :class:`~editspecialists.rewards.needs.ModelNeed`
    or a function of the config returning one (when the config chooses the model)."""
    needs = models if callable(models) else fixed_needs(list(models))

    def register(factory):
        if name in SCORES:
            raise ValueError(f"score {name!r} is already registered")
        SCORES[name] = ScoreSpec(name, lower_is_better, needs_masks, factory, needs)
        return factory

    return register


def place_model(model, device: torch.device) -> None:
    """Move every ``torch.nn.Module`` attribute of a feedback-model wrapper to ``device``, and its
    ``device`` (where it sends its inputs) with them."""
    for value in vars(model).values():
        if isinstance(value, torch.nn.Module):
            value.to(device)
    model.device = torch.device(device)


def reward_dtype(config) -> torch.dtype:
    return dtype_named(config.reward.dtype, "reward.dtype")


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` over ``images`` in chunks of ``batch_size`` (the reward batch size), concatenated."""
    return torch.cat([fn(chunk) for chunk in images.split(batch_size)])


def embed_in_chunks(embedder, images: torch.Tensor, batch_size: int):
    """A patch embedder over chunks: ``(tokens (N, T, D), grid)``."""
    parts = [embedder(chunk) for chunk in images.split(batch_size)]
    return torch.cat([tokens for tokens, _ in parts]), parts[0][1]


@register_score("structural", lower_is_better=True, models=[DEPTH])
def make_structural(config, device: torch.device, depth) -> ScoreFn:
    """Mean |depth(input) − depth(edit)| (docs/method.md §4); the input's depth is computed once per input
    (per batch, or per run with per-image constants)."""
    batch_size, align, model_id = config.reward.batch_size, config.reward.structural_align, config.models.depth

    def score(batch: FeedbackBatch) -> torch.Tensor:
        depth_inputs = batch.input_constant(("depth", model_id), lambda inputs: in_chunks(depth, inputs, batch_size))
        depth_edits = in_chunks(depth, batch.flat_edits, batch_size)
        return structural_score(batch.per_edit(depth_inputs), depth_edits, align).view(-1, batch.num_edits)

    return score


# What every held-out validation reports by default besides the run's own scores: the method's
# scores, and its reconstruction term alone, so that a run trained on one score shows what it does
# to the others.
VALIDATION_SCORES = ("semantic", "structural", "reconstruction")


def validation_score_names(config) -> list[str]:
    """The scores of ``config.val.scores``: a comma-separated list, or ``"auto"``: the run's own
    (``reward.weights``) and :data:`VALIDATION_SCORES`. Empty when the config asks for no
    validation (no ``val``, ``val.every`` 0, or neither ``val.fraction`` nor ``val.inputimg_dir``)."""
    val = config.get("val")
    if val is None or val.every <= 0 or not (val.fraction > 0 or val.inputimg_dir):
        return []
    choice = config.val.scores.strip()
    if choice != "auto":
        return list(dict.fromkeys(name.strip() for name in choice.split(",") if name.strip()))
    return list(dict.fromkeys([*config.reward.weights.keys(), *VALIDATION_SCORES]))


def run_score_names(config) -> list[str]:
    """Every score a training run computes: those it ranks by (``reward.weights``), then those its
    held-out validation reports."""
    return list(dict.fromkeys([*config.reward.weights.keys(), *validation_score_names(config)]))


def model_needs(config, names: list[str] | None = None) -> list[ModelNeed]:
    """The feedback models the registered scores among ``names`` (default :func:`run_score_names`)
    run, each once, in the scores' registration order; then the mask models when one of them reads
    masks (not with ``config.whole_frame``)."""
    names = run_score_names(config) if names is None else names
    specs = [spec for spec in SCORES.values() if spec.name in names]
    needs = [need for spec in specs for need in spec.models(config)]
    if not config.whole_frame and any(spec.needs_masks for spec in specs):
        needs.append(MASKS)
    return list({(need.role, need.keys): need for need in needs}.values())


def feedback_model_keys(config, names: list[str] | None = None) -> list[str]:
    """Config keys of the feedback models of :func:`model_needs` (structural → depth, semantic →
    its backbone, a score reading masks → detector and segmenter, a user's score → its own)."""
    return list(dict.fromkeys(key for need in model_needs(config, names) for key in need.keys))


@register_score("semantic", lower_is_better=True, needs_masks=True, models=semantic_needs)
def make_semantic(config, device: torch.device, embedder) -> ScoreFn:
    """Masked patch distance of each edit to its style image + ``rec_lambda`` · reconstruction outside (docs/method.md §4)."""
    batch_size, rec_lambda = config.reward.batch_size, float(config.reward.rec_lambda)
    backbone = config.reward.semantic_backbone
    model_id, _ = semantic_model_id(config)

    def score(batch: FeedbackBatch) -> torch.Tensor:
        edit_tokens, grid = embed_in_chunks(embedder, batch.flat_edits, batch_size)
        # The embedder resizes every image to its one input size: style tokens have the edits' grid.
        style_tokens = batch.style_constant(("patches", backbone, model_id),
                                            lambda styles: embed_in_chunks(embedder, styles, batch_size)[0])
        input_masks = batch.per_edit(batch.input_masks)
        reconstruction = semantic.reconstruction_outside(batch.flat_edits, batch.per_edit(batch.inputs), input_masks)
        value = semantic.semantic_score(
            edit_tokens,
            batch.per_edit(style_tokens),
            semantic.downsample_mask(input_masks, grid),
            batch.per_edit(semantic.downsample_mask(batch.style_masks, grid)),
            reconstruction,
            rec_lambda,
        )
        return value.view(-1, batch.num_edits)

    return score


@register_score("reconstruction", lower_is_better=True, needs_masks=True)
def make_reconstruction(config, device: torch.device) -> ScoreFn:
    """The semantic score's reconstruction term alone: per-pixel MSE (mean over RGB) between each
    edit and its input outside the input mask (docs/method.md §4; the evaluation's ``l2_out``)."""

    def score(batch: FeedbackBatch) -> torch.Tensor:
        input_masks = batch.per_edit(batch.input_masks)
        value = semantic.reconstruction_outside(batch.flat_edits, batch.per_edit(batch.inputs), input_masks)
        return value.view(-1, batch.num_edits)

    return score


@register_score("brightness", lower_is_better=False)
def make_brightness(config, device: torch.device) -> ScoreFn:
    """Mean pixel value of each edit, in [0, 1]; no model (for demos and debugging a setup)."""

    def score(batch: FeedbackBatch) -> torch.Tensor:
        return batch.edits.float().mean(dim=(2, 3, 4))

    return score


class Scorer:
    """``scorer(edits (B, G, 3, H, W), inputs (B, 3, H, W), styles (B, 3, H, W), input_keys,
    style_keys) -> {name: (B, G)}``.

    Everything runs in inference mode on ``device``; the returned float32 tensors are ordinary
    (non-inference) tensors, safe to gather and combine. With ``constants`` (and the images' keys)
    per-image values are computed once per run. Which masked images fell back (the detector found
    nothing) is kept until :meth:`take_mask_fallbacks`. ``models``: the feedback models the scores
    and ``mask_fn`` run.
    """

    def __init__(self, scores: dict[str, ScoreFn], mask_fn: MaskFn, input_name: str, style_name: str,
                 device: torch.device, constants: PerImageConstants | None = None, offload: bool = False,
                 models: LoadedModels | None = None):
        self.scores, self.mask_fn, self.device = scores, mask_fn, device
        self.input_name, self.style_name = input_name, style_name
        self.constants, self.offload, self.models = constants, offload, models
        self.fell_back: dict[str, list[torch.Tensor]] = {}

    def only(self, names: list[str]) -> "Scorer":
        """A scorer of the scores ``names`` alone, sharing this one's models, masks and per-image
        constants (its mask fallbacks are its own)."""
        missing = [name for name in names if name not in self.scores]
        if missing:
            raise ValueError(f"score(s) {missing} are not loaded; loaded: {', '.join(self.scores)}")
        return Scorer({name: self.scores[name] for name in names}, self.mask_fn, self.input_name, self.style_name,
                      self.device, self.constants, self.offload, self.models)

    @property
    def feedback_models(self) -> list:
        """The loaded feedback models (those of :attr:`models`)."""
        return [] if self.models is None else list(self.models.loaded.values())

    @contextlib.contextmanager
    def models_on_device(self):
        """With ``offload`` (``reward.offload``), the feedback models are kept on the CPU and moved
        to the scorer's device inside this block only (then back, the device's cache emptied);
        without, a no-op: they stay on the device."""
        if not self.offload:
            yield
            return
        for model in self.feedback_models:
            place_model(model, self.device)
        try:
            yield
        finally:
            for model in self.feedback_models:
                place_model(model, torch.device("cpu"))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def make_batch(self, edits: torch.Tensor, inputs: torch.Tensor, styles: torch.Tensor,
                   input_keys: list[ImageKey] | None = None, style_keys: list[ImageKey] | None = None) -> FeedbackBatch:
        """A validated :class:`FeedbackBatch` on the scorer's device (its masks are read after scoring)."""
        return FeedbackBatch(edits.to(self.device), inputs.to(self.device), styles.to(self.device),
                             self.input_name, self.style_name, self.mask_fn, input_keys, style_keys, self.constants)

    def score(self, batch: FeedbackBatch) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            values = {name: fn(batch).float() for name, fn in self.scores.items()}
        for name, flags in batch.mask_fallbacks.items():
            self.fell_back.setdefault(name, []).extend(flags)
        return {name: value.clone() for name, value in values.items()}

    def __call__(self, edits: torch.Tensor, inputs: torch.Tensor, styles: torch.Tensor,
                 input_keys: list[ImageKey] | None = None,
                 style_keys: list[ImageKey] | None = None) -> dict[str, torch.Tensor]:
        return self.score(self.make_batch(edits, inputs, styles, input_keys, style_keys))

    @property
    def predicts_masks(self) -> bool:
        """Whether masks come from the detector (else: whole frame, or no score reads masks)."""
        return isinstance(self.mask_fn, PredictedMasks)

    def take_mask_fallbacks(self) -> dict[str, torch.Tensor]:
        """``{name: (n,) bool}`` over the n images whose masks were read for ``name`` since the last
        call (each time an image is scored, computed or looked up): which fell back (CPU)."""
        taken, self.fell_back = self.fell_back, {}
        return {name: torch.cat(flags) for name, flags in taken.items()} if self.predicts_masks else {}


class PredictedMasks:
    """A :data:`MaskFn` over a :class:`MaskPredictor`, chunked by ``batch_size``; images where the
    detector finds nothing get ``fallback``'s mask."""

    def __init__(self, predictor: MaskPredictor, batch_size: int, fallback: str):
        self.predictor, self.batch_size, self.fallback = predictor, batch_size, fallback

    def __call__(self, images: torch.Tensor, name: str) -> Masks:
        return Masks.cat([self.predictor(chunk, name, self.fallback) for chunk in images.split(self.batch_size)])


def mask_function(config, models: LoadedModels) -> MaskFn:
    """Grounded-SAM2 masks (:class:`PredictedMasks`, the predictor of :data:`MASKS` from
    ``models``), or whole-frame masks."""
    if config.whole_frame:
        return whole_frame_mask_fn
    reward = config.reward
    if reward.mask_fallback not in MASK_FALLBACKS:
        raise ValueError(f"reward.mask_fallback must be one of {MASK_FALLBACKS}, got {reward.mask_fallback!r}")
    return PredictedMasks(models.get(MASKS), reward.batch_size, reward.mask_fallback)


def build_scorer(config, device, accelerator=None, names: list[str] | None = None) -> Scorer:
    """A :class:`Scorer` of the scores ``names`` (default: those of ``config.reward.weights``);
    it loads each feedback model once (:class:`LoadedModels`, shared by :meth:`Scorer.only`), on
    the main process first when an ``accelerator`` is given (no download/cache races), on
    ``device``, or on the CPU with ``reward.offload`` (see :meth:`Scorer.models_on_device`)."""
    names = list(config.reward.weights.keys()) if names is None else names
    unknown = [name for name in names if name not in SCORES]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown} in reward.weights or val.scores; registered: "
                         f"{', '.join(SCORES)}")
    device = torch.device(device)
    load_device = torch.device("cpu") if config.reward.offload else device
    first = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    models = LoadedModels(config, load_device)
    with first:
        scores = {name: SCORES[name].make(config, load_device, models) for name in names}
        needs_masks = any(SCORES[name].needs_masks for name in names)
        mask_fn = mask_function(config, models) if needs_masks else whole_frame_mask_fn
    constants = PerImageConstants() if config.reward.per_image_constants else None
    return Scorer(scores, mask_fn, config.input_name, config.style_name, device, constants,
                  offload=config.reward.offload, models=models)
