"""The feedback measurement: edits scored per second by each feedback model, and the speed-up of
scoring on a worker thread while the next batch samples."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from editspecialists.benchmarks.measuring import interleaved_rounds
from editspecialists.benchmarks.models import BenchModels
from editspecialists.benchmarks.settings import BenchSettings
from editspecialists.diffusion.sampler import sample_edits


def measure_feedback(make_config: Callable[[], object], models: BenchModels, settings: BenchSettings,
                     edits: torch.Tensor, overlap: bool = True) -> dict:
    """Edits scored per second by each score of the config's ``reward.weights`` (masks computed
    beforehand and timed separately as ``masks``: input and style images segmented per second).

    Also the speed-up of overlapping the feedback with sampling (:func:`measure_feedback_overlap`;
    with ``overlap`` only, as it samples with the policy).
    And the speed-up of the per-image constants (:func:`measure_constants_speedup`).
    ``make_config()`` returns the config naming the feedback models. Returns
    ``{"models": {name: {"seconds", "images_per_s"}}, "resident_mb": GPU memory the loaded feedback
    models hold (what ``reward.offload`` frees while sampling and training; None on a CPU),
    "constants_speedup": x, "overlap_speedup": y, "skipped": ""}``; when the rewards package is missing or the feedback fails (a missing
    dependency or model, say), ``models`` is empty, the speed-ups None and ``skipped`` says why,
    so that the other figures of a long run are still reported.
    """
    try:
        from editspecialists.rewards import build_scorer
    except ImportError as error:
        return {"models": {}, "resident_mb": None, "constants_speedup": None, "overlap_speedup": None,
                "skipped": f"rewards package not available ({error})"}
    try:
        config = make_config()
        before = allocated_mb(models.device)
        scorer = build_scorer(config, models.device)
        resident = allocated_mb(models.device) - before if models.device.type == "cuda" else None
        return {"models": _time_feedback(scorer, models, settings, edits), "resident_mb": resident,
                "constants_speedup": measure_constants_speedup(scorer, models, settings, edits),
                "overlap_speedup": measure_feedback_overlap(scorer, models, settings) if overlap else None,
                "skipped": ""}
    except Exception as error:  # noqa: BLE001 - reported in the table and the JSON
        return {"models": {}, "resident_mb": None, "constants_speedup": None, "overlap_speedup": None,
                "skipped": f"feedback failed: {type(error).__name__}: {error}"}


def allocated_mb(device: torch.device) -> float:
    """CUDA memory allocated on ``device`` now (MB); 0 on a CPU."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def measure_constants_speedup(scorer, models: BenchModels, settings: BenchSettings, edits: torch.Tensor) -> float:
    """Speed-up of scoring one sampling batch's ``edits`` (B, G, 3, H, W) with the per-image
    constants of ``reward.per_image_constants`` (masks, style tokens and input depth looked up, as
    at every epoch after the first) over recomputing them (the research code): two scorers sharing
    ``scorer``'s models, one with and one without constants, run in interleaved rounds;
    recomputed time ÷ constants time."""
    from editspecialists.rewards.constants import PerImageConstants, image_keys

    scorers = {constants: scorer.only(list(scorer.scores)) for constants in (False, True)}
    scorers[False].constants, scorers[True].constants = None, PerImageConstants()
    names = [f"bench_{i}.png" for i in range(edits.shape[0])]
    keys = (image_keys("input", names, models.inputs), image_keys("style", names, models.styles))
    scorers[True](edits, models.inputs, models.styles, *keys)  # computes the constants, as epoch 0 does
    rounds = interleaved_rounds({"recomputed": lambda: scorers[False](edits, models.inputs, models.styles),
                                 "constants": lambda: scorers[True](edits, models.inputs, models.styles, *keys)},
                                repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    return rounds.median_ratio(lambda s: s["recomputed"], "constants")


def _time_feedback(scorer, models: BenchModels, settings: BenchSettings, edits: torch.Tensor) -> dict:
    from editspecialists.rewards.registry import whole_frame_mask_fn

    batch = scorer.make_batch(edits, models.inputs, models.styles)
    fns = {name: _inference(lambda fn=fn: fn(batch)) for name, fn in scorer.scores.items()}
    if scorer.mask_fn is not whole_frame_mask_fn:  # some score reads Grounded-SAM2 masks
        fns["masks"] = _inference(lambda: (scorer.mask_fn(batch.inputs, scorer.input_name),
                                           scorer.mask_fn(batch.styles, scorer.style_name)))
    _inference(lambda: (batch.input_masks, batch.style_masks))()
    rounds = interleaved_rounds(fns, repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    scored = {name: edits.shape[0] * edits.shape[1] for name in scorer.scores}
    scored["masks"] = 2 * edits.shape[0]
    return {name: {"seconds": rounds.median(name), "images_per_s": scored[name] / rounds.median(name)}
            for name in fns}


def measure_feedback_overlap(scorer, models: BenchModels, settings: BenchSettings, batches: int = 2) -> float:
    """Speed-up of sampling ``batches`` batches while the previous one is scored on a worker
    thread (:class:`~editspecialists.training.overlap.BackgroundScoring`, as the trainer on CUDA)
    over sampling and scoring them one after the other: serial time ÷ overlapped time."""
    from editspecialists.training.overlap import BackgroundScoring

    common = dict(nb_gen=settings.nb_gen, scales=models.scales, autocast=models.autocast)
    modes = {"serial": BackgroundScoring(scorer, models.device, enabled=False),
             "overlapped": BackgroundScoring(scorer, models.device, enabled=True)}

    def sample_and_score(scoring):
        generator = torch.Generator(models.device).manual_seed(settings.seed)
        for _ in range(batches):
            trajectories = sample_edits(models.policy, models.scheduler, models.vae, models.cond,
                                        generator=generator, **common)
            scoring.submit(trajectories.images, models.inputs, models.styles)
        return scoring.results()

    rounds = interleaved_rounds({name: lambda s=scoring: sample_and_score(s) for name, scoring in modes.items()},
                                repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    for scoring in modes.values():
        scoring.close()
    return rounds.median_ratio(lambda s: s["serial"], "overlapped")


def _inference(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return fn()

    return run


def tiny_feedback_config(config, root: Path | None = None):
    """``config`` with every feedback model id pointed at the tiny random feedback models
    (:mod:`editspecialists.demo.feedback_standins`, built on first use): plumbing speed only."""
    from editspecialists.demo import feedback_standins

    feedback_standins.build_all(root)
    config = config.copy_and_resolve_references()
    config.models.update(feedback_standins.models_config(root))
    return config


# The default reward's feedback models, by their config key under ``models``.
REALSIZE_FEEDBACK_KEYS = ("detector", "segmenter", "depth", "dreamsim", "dreamsim_cache")


def realsize_feedback_config(config, root: Path | None = None):
    """``config`` with the default reward's feedback models (Grounding DINO, SAM 2, Depth-Anything,
    DreamSim) pointed at real-size builds with random weights (:mod:`editspecialists.demo.realsize`,
    built on first use under ``<cache>/realsize``: 3.3 GB, a few minutes on a CPU): real compute,
    meaningless scores."""
    from editspecialists.demo import realsize
    from editspecialists.demo.cache import cached_build, default_cache_root

    folder = Path(root or default_cache_root()) / "realsize"
    for role in ("detector", "segmenter", "depth", "dreamsim"):
        cached_build(folder / role, realsize.BUILDERS[role])
    config = config.copy_and_resolve_references()
    built = realsize.models_config(folder)
    config.models.update({key: built[key] for key in REALSIZE_FEEDBACK_KEYS})
    return config
