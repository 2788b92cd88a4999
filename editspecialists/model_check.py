"""The model check of ``scripts/check_models.py``: every configured model loaded by its id and run
on one image through the production function that uses it, one at a time, as a table; then the
estimated GPU memory of a training run.

Rows (those the configuration uses): the policy (the trainer's ``build_edit_model``, two
sampling steps and one training micro-step); each feedback model the config's scores need
(:func:`~editspecialists.rewards.registry.model_needs`: depth, the semantic patch embedder,
Grounded-SAM2 masks with detection and segmentation of one box, and a registered score's own models,
each through its :class:`~editspecialists.rewards.needs.ModelNeed`); and the evaluation's masks,
depth and families of :mod:`editspecialists.evaluation.families` (CLIP, DINOv2, DreamSim, HPSv2,
PickScore, ImageReward). Each model is freed before the next loads.
"""

from __future__ import annotations

import gc
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch

from editspecialists.evaluation.families import evaluation_model_keys
from editspecialists.model_ids import (MEMORY_FIX, ModelIdError, explain_loading, first_line, model_ids_of,
                                       out_of_memory, validate_model_ids)
from editspecialists.rewards.masks import MASK_KEYS
from editspecialists.rewards.needs import DEPTH, ModelNeed, check_masks
from editspecialists.rewards.registry import feedback_model_keys, model_needs
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
    """The trainer's edit model (:func:`~editspecialists.diffusion.bundle.build_edit_model` of the config)."""
    from editspecialists.diffusion.bundle import EditModelSpec, build_edit_model

    return build_edit_model(EditModelSpec.from_config(ctx.config), ctx.device)


def run_policy(model, ctx: CheckContext) -> None:
    """Two sampling steps for ``sample.nb_gen`` edits of the image, then one training micro-step
    (loss and backward of the trainer) on them, under the trainer's autocast."""
    from editspecialists.training.micro_step import training_micro_step
    from editspecialists.diffusion.sampler import sample_edits

    config, device = ctx.config, ctx.device
    model.set_timesteps(2, ctx.image.shape[-1])
    cond = model.conditioning(ctx.image, ctx.image, [ctx.prompt])
    autocast = ((lambda: torch.autocast(device.type, dtype=model.frozen_dtype))
                if model.frozen_dtype != torch.float32 else nullcontext)
    trajectories = sample_edits(model.policy, model.scheduler, model.vae, cond, nb_gen=config.sample.nb_gen,
                                scales=model.scales, eta=config.sample.eta,
                                generator=torch.Generator(device).manual_seed(0), autocast=autocast)
    step_index = trajectories.trainable.nonzero().flatten()[:1]
    model.policy.train()
    training_micro_step(model.policy, model.scheduler, trajectories, step_index, model.empty_embeds, scales=model.scales,
                        autocast=autocast, eps=config.train.eps, beta=config.train.beta)


def need_check(need: ModelNeed) -> ModelCheck:
    """The row of a feedback model: loaded as its scores load it (in ``reward.dtype``), one image
    through ``need.check``."""
    return ModelCheck(need.role, need.keys, lambda ctx: need.load_frozen(ctx.config, ctx.device, ctx.feedback_dtype),
                      lambda model, ctx: need.check(model, ctx.image, ctx.config))


def load_evaluation_masks(ctx: CheckContext):
    """The mask models with the detector thresholds of training or evaluation configs."""
    from editspecialists.rewards.masks import MaskPredictor

    models = ctx.config.models
    return MaskPredictor.from_pretrained(
        models.detector, models.segmenter, device=ctx.device, dtype=ctx.feedback_dtype,
        box_threshold=ctx.threshold("box_threshold"), text_threshold=ctx.threshold("text_threshold"))


def run_masks(predictor, ctx: CheckContext) -> None:
    """Detection and segmentation of the check image (:func:`~editspecialists.rewards.needs.check_masks`)."""
    check_masks(predictor, ctx.image, ctx.config)


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
EVALUATION_CHECKS = (
    ModelCheck("masks", MASK_KEYS, load_evaluation_masks, run_masks),
    need_check(DEPTH),
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


def is_training_config(config) -> bool:
    return "reward" in config and "pretrained" in config


def training_keys(config) -> list[str]:
    """Config keys of the models a training run of ``config`` loads: the policy, then feedback."""
    return ["pretrained.model", *feedback_model_keys(config)] if is_training_config(config) else []


def evaluation_keys(config) -> list[str]:
    from editspecialists.evaluation.families import ALL_METRICS, parse_metrics

    metrics = parse_metrics(config.metrics) if "metrics" in config else ALL_METRICS
    return evaluation_model_keys(metrics, config.whole_frame)


def download_keys(config, with_eval: bool) -> list[str]:
    """Config keys of the models ``download_repos.sh`` fetches: a training run's
    (:func:`training_keys`), and with ``with_eval`` an evaluation's."""
    return list(dict.fromkeys([*training_keys(config), *(evaluation_keys(config) if with_eval else [])]))


def planned_checks(config) -> list[tuple[ModelCheck, str]]:
    """``[(check, use)]`` for the rows the configuration uses, ``use`` ``train``, ``eval`` or
    ``train+eval``: the policy and a row per feedback model of the config's scores
    (:func:`model_needs`), then the evaluation's rows whose models no training row loads."""
    evaluation = set(evaluation_keys(config))
    training = [POLICY, *map(need_check, model_needs(config))] if is_training_config(config) else []
    trained = {key for check in training for key in check.keys}
    planned = [(check, "train+eval" if set(check.keys) <= evaluation else "train") for check in training]
    return planned + [(check, "eval") for check in EVALUATION_CHECKS
                      if set(check.keys) <= evaluation and not set(check.keys) <= trained]


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


def resident_modules(obj, depth: int = 3, loaded: bool = True) -> list[torch.nn.Module]:
    """The torch modules a loaded object holds (its attributes, ``depth`` levels down through
    lists and objects of this package; the ``loaded`` object itself may be of any package, a
    registered score's own model say)."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if depth == 0:
        return []
    if isinstance(obj, (list, tuple)):
        values = list(obj)
    elif hasattr(obj, "__dict__") and (loaded or type(obj).__module__.startswith("editspecialists")):
        values = list(vars(obj).values())
    else:
        return []
    found = [module for value in values for module in resident_modules(value, depth - 1, loaded=False)]
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
    from editspecialists.memory import PeakMemory, synchronize

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
                if out_of_memory(error) is not None:
                    raise
                labels = ", ".join(f"role {role}: {model_id}" for role, model_id in ids.items())
                raise ModelIdError(f"{labels}: loaded as {result.classes}, but one image through it failed "
                                   f"({first_line(error)}): the model does not fit its loader") from error
            synchronize(ctx.device)
        result.peak_mib = peak.megabytes
    except ModelIdError as error:
        result.error = str(error)
    except Exception as error:  # out of memory fails the row; anything else keeps its traceback
        memory = out_of_memory(error)
        if memory is None:
            raise
        result.error = (str(memory) if loaded is None else
                        f"out of memory running one image through {check.name} ({first_line(memory)}): {MEMORY_FIX}")
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
