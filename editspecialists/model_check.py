"""The model check of ``scripts/check_models.py``: every configured model loaded by its id and run
on one image through the production function that uses it, one at a time, as a table; then the
estimated GPU memory of a training run.

Rows (those the configuration uses): the policy (``load_pipeline`` + ``build_policy``, two
sampling steps and one training micro-step), Grounded-SAM2 masks (``MaskPredictor``: detection and
segmentation of one box), depth (``DepthEstimator``), the semantic patch embedder
(``load_patch_embedder``), and the evaluation families of :mod:`editspecialists.evaluation.families`
(CLIP, DINOv2, DreamSim, HPSv2, PickScore, ImageReward). Each model is freed before the next loads.
"""

from __future__ import annotations

import gc
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch

from editspecialists.evaluation.families import evaluation_model_keys
from editspecialists.model_ids import ModelIdError, explain_loading, first_line, model_ids_of, validate_model_ids
from editspecialists.rewards.registry import SEMANTIC_BACKBONE_KEYS, feedback_model_keys
from editspecialists.precision import DTYPES, dtype_named, mixed_precision_dtype

DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
PROMPT = "turn the {input} into {style}"
MIB = 2**20


# ------------------------------------------------------------------------------ what is checked
@dataclass
class CheckContext:
    """What every check reads: the config, the device, one image ``(1, 3, S, S)`` in [0, 1] and
    the dtypes of training's feedback models and of the evaluation models."""

    config: object
    device: torch.device
    image: torch.Tensor
    feedback_dtype: torch.dtype
    evaluation_dtype: torch.dtype

    @property
    def prompt(self) -> str:
        return PROMPT.format(input=self.config.input_name, style=self.config.style_name)

    def threshold(self, name: str) -> float:
        """A detector threshold from ``config.reward`` (training configs) or the top level (evaluation configs)."""
        return (self.config.reward if "reward" in self.config else self.config)[name]


@dataclass(frozen=True)
class ModelCheck:
    """One row: the config keys of the ids it loads, how to load them and how to run one image."""

    name: str
    keys: tuple[str, ...]
    load: Callable[[CheckContext], object]
    run: Callable[[object, CheckContext], None]


def load_policy(ctx: CheckContext):
    """The trainer's models: pipeline, encoders in the mixed-precision dtype, the LoRA (or full) policy."""
    from editspecialists.diffusion.pipeline import load_pipeline, place_encoders
    from editspecialists.diffusion.policy import build_policy

    config = ctx.config
    weight_dtype = mixed_precision_dtype(config.mixed_precision)
    pipe = load_pipeline(config.pretrained.model, revision=config.pretrained.revision,
                         scheduler=config.pretrained.scheduler)
    place_encoders(pipe, ctx.device, weight_dtype)
    pipe.unet.to(ctx.device)
    policy = build_policy(pipe.unet, use_lora=config.use_lora, lora_rank=config.lora_rank,
                          lora_alpha=config.lora_alpha, frozen_dtype=weight_dtype)
    return SimpleNamespace(policy=policy, vae=pipe.vae, text_encoder=pipe.text_encoder,
                           tokens=SimpleNamespace(tokenizer=pipe.tokenizer, scheduler=pipe.scheduler),
                           weight_dtype=weight_dtype)


def run_policy(parts, ctx: CheckContext) -> None:
    """Two sampling steps for ``sample.nb_gen`` edits of the image, then one training micro-step
    (loss and backward of the trainer) on them, under the trainer's autocast."""
    from editspecialists.benchmarks.micro_step import training_micro_step
    from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
    from editspecialists.diffusion.pipeline import encode_images, encode_prompts
    from editspecialists.diffusion.sampler import sample_edits

    config, device = ctx.config, ctx.device
    tokenizer, scheduler = parts.tokens.tokenizer, parts.tokens.scheduler
    scheduler.set_timesteps(2, device=device)
    latents = encode_images(parts.vae, ctx.image).float()
    empty = encode_prompts(tokenizer, parts.text_encoder, [""]).float()
    cond = EditConditioning(latents, latents, encode_prompts(tokenizer, parts.text_encoder, [ctx.prompt]).float(),
                            empty)
    scales = GuidanceScales(config.sample.guidance_scale, config.sample.image_guidance_scale,
                            config.sample.style_image_guidance_scale)
    autocast = ((lambda: torch.autocast(device.type, dtype=parts.weight_dtype))
                if parts.weight_dtype != torch.float32 else nullcontext)
    trajectories = sample_edits(parts.policy, scheduler, parts.vae, cond, nb_gen=config.sample.nb_gen,
                                scales=scales, eta=config.sample.eta,
                                generator=torch.Generator(device).manual_seed(0), autocast=autocast)
    step_index = trajectories.trainable.nonzero().flatten()[:1]
    parts.policy.train()
    training_micro_step(parts.policy, scheduler, trajectories, step_index, empty, scales=scales,
                        autocast=autocast, eps=config.train.eps, beta=config.train.beta)


def load_masks(ctx: CheckContext):
    from editspecialists.rewards.masks import MaskPredictor

    models = ctx.config.models
    return MaskPredictor.from_pretrained(
        models.detector, models.segmenter, device=ctx.device, dtype=ctx.feedback_dtype,
        box_threshold=ctx.threshold("box_threshold"), text_threshold=ctx.threshold("text_threshold"))


def run_masks(predictor, ctx: CheckContext) -> None:
    """Masks of the input name (detection), and the segmenter on the central box of the image
    (it runs whether or not the detector found a box)."""
    side = ctx.image.shape[-1]
    predictor(ctx.image, ctx.config.input_name)
    with torch.inference_mode():
        predictor.segment(ctx.image, [torch.tensor([[side / 4, side / 4, 3 * side / 4, 3 * side / 4]])])


def load_depth(ctx: CheckContext):
    from editspecialists.rewards.depth import DepthEstimator

    return DepthEstimator.from_pretrained(ctx.config.models.depth, device=ctx.device, dtype=ctx.feedback_dtype)


def load_semantic(ctx: CheckContext):
    from editspecialists.rewards.features import load_patch_embedder
    from editspecialists.rewards.registry import semantic_model_id

    model_id, options = semantic_model_id(ctx.config)
    return load_patch_embedder(ctx.config.reward.semantic_backbone, model_id, device=ctx.device,
                               dtype=ctx.feedback_dtype, **options)


def call_on_image(model, ctx: CheckContext) -> None:
    model(ctx.image)


def evaluation_families(*names: str) -> Callable[[CheckContext], list]:
    """A loader building the evaluation families ``names`` as the evaluator does."""
    def load(ctx: CheckContext) -> list:
        from editspecialists.evaluation.families import FAMILIES, FamilySettings

        settings = FamilySettings(ctx.config.models, ctx.device, ctx.evaluation_dtype,
                                  structural_align=ctx.config.get("structural_align", "none"))
        return [FAMILIES[name].build(settings) for name in names]

    return load


def run_families(families: list, ctx: CheckContext) -> None:
    """Each family on a batch of one (edit = input = style = the image, whole-image masks)."""
    from editspecialists.evaluation.families import EvalBatch
    from editspecialists.rewards.masks import whole_frame_masks

    masks = whole_frame_masks(ctx.image)
    batch = EvalBatch(ctx.image, ctx.image, ctx.image, [ctx.prompt], [ctx.config.input_name], masks, masks)
    for family in families:
        family(batch)


POLICY = ModelCheck("policy", ("pretrained.model",), load_policy, run_policy)
CHECKS = (
    POLICY,
    ModelCheck("masks", ("models.detector", "models.segmenter"), load_masks, run_masks),
    ModelCheck("depth", ("models.depth",), load_depth, call_on_image),
    ModelCheck("semantic", (), load_semantic, call_on_image),  # keys: the semantic backbone's
    ModelCheck("dreamsim", ("models.dreamsim",), evaluation_families("semantic", "dreamsim_patches"), run_families),
    ModelCheck("clip", ("models.clip",), evaluation_families("clip", "clip_patches"), run_families),
    ModelCheck("dino", ("models.dino",), evaluation_families("dino_patches"), run_families),
    ModelCheck("hps", ("models.hps_architecture", "models.hps_checkpoint"), evaluation_families("hps"),
               run_families),
    ModelCheck("pickscore", ("models.pickscore", "models.pickscore_processor"), evaluation_families("pickscore"),
               run_families),
    ModelCheck("imagereward", ("models.imagereward", "models.imagereward_tokenizer"),
               evaluation_families("imagereward"), run_families),
)


def training_keys(config) -> list[str]:
    """Config keys of the models a training run of ``config`` loads: the policy, then feedback."""
    return ["pretrained.model", *feedback_model_keys(config)] if "reward" in config and "pretrained" in config else []


def evaluation_keys(config) -> list[str]:
    from editspecialists.evaluation.families import ALL_METRICS, parse_metrics

    metrics = parse_metrics(config.metrics) if "metrics" in config else ALL_METRICS
    return evaluation_model_keys(metrics, config.whole_frame)


def planned_checks(config) -> list[tuple[ModelCheck, str]]:
    """``[(check, use)]`` for the rows the configuration uses; ``use``: ``train``, ``eval`` or
    ``train+eval``. The semantic row gets its backbone's key; the evaluation's DreamSim row is
    left out when the semantic row already loads DreamSim."""
    training, evaluation = training_keys(config), evaluation_keys(config)
    backbone = config.reward.semantic_backbone if "reward" in config else ""
    semantic_keys = tuple(key for key in training if key == SEMANTIC_BACKBONE_KEYS.get(backbone))
    planned = []
    for check in CHECKS:
        if check.name == "semantic":
            if not semantic_keys:
                continue
            check = ModelCheck(check.name, semantic_keys, check.load, check.run)
        elif check.name == "dreamsim" and semantic_keys == check.keys:
            continue
        uses = [use for use, keys in (("train", training), ("eval", evaluation)) if set(check.keys) <= set(keys)]
        if uses:
            planned.append((check, "+".join(uses)))
    return planned


# ------------------------------------------------------------------------------ running a check
@dataclass
class CheckResult:
    """One row of the table; ``frozen_bytes`` / ``trainable_parameters``: of the loaded models."""

    check: ModelCheck
    use: str
    ids: dict[str, str]
    classes: str = ""
    dtypes: str = ""
    device: str = ""
    seconds: float = 0.0
    peak_mib: float | None = None
    error: str = ""
    frozen_bytes: int = 0
    trainable_parameters: int = 0

    @property
    def ok(self) -> bool:
        return not self.error


def resident_modules(obj, depth: int = 3) -> list[torch.nn.Module]:
    """The torch modules an object of this package holds (its attributes, ``depth`` levels down
    through objects and lists of this package)."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if depth == 0:
        return []
    if isinstance(obj, (list, tuple)):
        values = list(obj)
    elif isinstance(obj, SimpleNamespace) or type(obj).__module__.startswith("editspecialists"):
        values = list(vars(obj).values())
    else:
        return []
    found = [module for value in values for module in resident_modules(value, depth - 1)]
    return list({id(module): module for module in found}.values())


def class_label(module: torch.nn.Module) -> str:
    """The module's class; a wrapper of this package shows the library models it wraps."""
    name = type(module).__name__
    if not type(module).__module__.startswith("editspecialists"):
        return name
    inner = [type(child).__name__ for child in module.children() if hasattr(child, "config")]
    return f"{name}({', '.join(inner)})" if inner else name


def unique_parameters(modules: list[torch.nn.Module]) -> list[torch.nn.Parameter]:
    return list({id(p): p for module in modules for p in module.parameters()}.values())


def describe(result: CheckResult, loaded) -> None:
    """Classes, dtypes, device and parameter sizes of the loaded models into ``result``."""
    modules = resident_modules(loaded)
    parameters = unique_parameters(modules)
    result.classes = " + ".join(dict.fromkeys(class_label(module) for module in modules))
    result.dtypes = "+".join(sorted({DTYPE_NAMES.get(p.dtype, str(p.dtype)) for p in parameters}))
    result.device = ",".join(sorted({str(p.device) for p in parameters}))
    result.frozen_bytes = sum(p.numel() * p.element_size() for p in parameters if not p.requires_grad)
    result.trainable_parameters = sum(p.numel() for p in parameters if p.requires_grad)


def run_check(check: ModelCheck, use: str, ctx: CheckContext) -> CheckResult:
    """Validate the row's ids, load them (errors explained by role and id), run one image; the
    models are freed before returning."""
    from editspecialists.benchmarks.measuring import PeakMemory, synchronize

    config = ctx.config
    ids = model_ids_of(config, check.keys)
    revisions = {"pretrained.model": config.pretrained.revision} if "pretrained" in config else {}
    result = CheckResult(check, use, ids)
    loaded = None
    start = time.perf_counter()
    try:
        with PeakMemory(ctx.device) as peak:
            validate_model_ids(ids, revisions)
            with explain_loading(ids, revisions):
                loaded = check.load(ctx)
            describe(result, loaded)
            try:
                check.run(loaded, ctx)
            except Exception as error:
                labels = ", ".join(f"role {role}: {model_id}" for role, model_id in ids.items())
                raise ModelIdError(f"{labels}: loaded as {result.classes}, but one image through it failed "
                                   f"({first_line(error)}): the model does not fit its loader") from error
            synchronize(ctx.device)
        result.peak_mib = peak.megabytes
    except ModelIdError as error:
        result.error = str(error)
    finally:
        result.seconds = time.perf_counter() - start
        del loaded
        free_memory(ctx.device)
    return result


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_image(size: int, seed: int = 0) -> torch.Tensor:
    """A smooth random RGB image ``(1, 3, size, size)`` in [0, 1] (an upsampled 8 × 8 noise)."""
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def make_context(config, device: torch.device) -> CheckContext:
    size = config.get("data_resize", 256)
    feedback_dtype = dtype_named(config.reward.dtype, "reward.dtype") if "reward" in config else torch.float32
    evaluation_dtype = dtype_named(config.get("dtype", "fp32"), "dtype")
    return CheckContext(config, device, check_image(size).to(device), feedback_dtype, evaluation_dtype)


def check_models(config, device: torch.device, report: Callable[[CheckResult], None] = lambda result: None
                 ) -> list[CheckResult]:
    """Run every planned check in turn; ``report`` is called after each row (progress)."""
    ctx = make_context(config, device)
    results = []
    for check, use in planned_checks(config):
        results.append(run_check(check, use, ctx))
        report(results[-1])
    return results


# ------------------------------------------------------------------------------ memory estimate
@dataclass
class MemoryEstimate:
    """Bytes a training process holds for weights and optimizer state (not activations)."""

    policy_frozen: int
    trainable_parameters: int
    bytes_per_trainable: int
    feedback: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return self.trainable_parameters * self.bytes_per_trainable

    @property
    def total(self) -> int:
        return self.policy_frozen + self.trainable + sum(self.feedback.values())


def bytes_per_trainable_parameter(use_8bit_adam: bool) -> int:
    """fp32 weight and gradient (4 + 4) and AdamW's two moments (2 × 4, or 2 × 1 with 8-bit Adam)."""
    return 4 + 4 + (2 if use_8bit_adam else 8)


def estimate_training_memory(config, results: list[CheckResult]) -> MemoryEstimate | None:
    """From the loaded parameter counts × dtype bytes: the policy's frozen weights (UNet base, VAE,
    text encoder, frozen reference parts), trainable parameters with gradient and AdamW state, and
    every feedback model of training resident; None for a configuration without training."""
    rows = [result for result in results if "train" in result.use]
    if not rows:
        return None
    policy = [result for result in rows if result.check.name == POLICY.name]
    estimate = MemoryEstimate(
        policy_frozen=sum(result.frozen_bytes for result in policy),
        trainable_parameters=sum(result.trainable_parameters for result in policy),
        bytes_per_trainable=bytes_per_trainable_parameter(config.train.use_8bit_adam),
    )
    for result in rows:
        if not result.ok:
            estimate.missing.append(result.check.name)
        elif result.check.name != POLICY.name:
            estimate.feedback[result.check.name] = result.frozen_bytes
    return estimate


# ------------------------------------------------------------------------------ output
COLUMNS = ("role", "id", "use", "class loaded", "dtype", "device", "seconds", "peak MiB", "result")


def table_row(result: CheckResult) -> tuple[str, ...]:
    peak = "" if result.peak_mib is None else f"{result.peak_mib:,.0f}"
    return (" + ".join(result.ids), " + ".join(result.ids.values()), result.use, result.classes or "-",
            result.dtypes or "-", result.device or "-", f"{result.seconds:.1f}", peak or "-",
            "OK" if result.ok else "FAILED")


def format_table(results: list[CheckResult], device: torch.device) -> str:
    """The aligned table, then one block per failed row with its message (role, id, what to do)."""
    rows = [COLUMNS] + [table_row(result) for result in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    kind = "CUDA max allocated during the row" if device.type == "cuda" else "the process's peak RSS so far"
    lines.append(f"seconds: load + one image; peak MiB: {kind}.")
    for result in results:
        if not result.ok:
            lines += ["", f"FAILED {result.check.name}:"] + [f"  {line}" for line in result.error.splitlines()]
    return "\n".join(lines)


def format_estimate(config, estimate: MemoryEstimate) -> str:
    """The training memory estimate, in MiB and GiB, with what it leaves out."""
    def mib(count: int) -> str:
        return f"{count / MIB:,.1f} MiB"

    weights = DTYPE_NAMES[mixed_precision_dtype(config.mixed_precision)]
    lines = [
        "Estimated GPU memory of a training run, per process (an estimate: parameter counts x dtype bytes "
        "of the models loaded above; activations, CUDA context and allocator slack come on top, see the "
        "policy row's peak for one image's sampling and training step):",
        f"  policy frozen weights (UNet base, VAE, text encoder in {weights}; reference parts)  "
        f"{mib(estimate.policy_frozen)}",
        f"  trainable parameters {estimate.trainable_parameters:,} x {estimate.bytes_per_trainable} bytes "
        f"(fp32 weight, gradient, AdamW moments)  {mib(estimate.trainable)}",
    ]
    lines += [f"  feedback model {name} (reward.dtype {config.reward.dtype})  {mib(size)}"
              for name, size in estimate.feedback.items()]
    lines.append(f"  total  {mib(estimate.total)} = {estimate.total / 2**30:.2f} GiB")
    if estimate.missing:
        lines.append(f"  incomplete: failed rows not counted: {', '.join(estimate.missing)}")
    return "\n".join(lines)


def report(config, results: list[CheckResult], device: torch.device) -> str:
    """The table and, for a training configuration, the memory estimate."""
    text = format_table(results, device)
    estimate = estimate_training_memory(config, results)
    if estimate is not None:
        text += "\n\n" + format_estimate(config, estimate)
    return text
