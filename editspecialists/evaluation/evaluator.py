"""Evaluate a folder of edits: pair them, run the selected metric families, write JSON/CSV/PNG.

Edits are read from ``<sample_savedir>/<input_name>_<style_name>/`` (where ``scripts/generate.py``
writes them). Edits, inputs and styles are resized (short side) and centre-cropped to
``data_resize`` (256 by default, as the original), or with ``data_resize`` 0 every input and style
image to its edit's size, so pixel and patch metrics compare aligned images. A metric family whose
optional dependency or model cannot be loaded is skipped with one log line; the others still run.
Edits that cannot be scored (missing, unreadable, not in the manifest) are named in one warning and
counted in the output. The outputs are written together at the end
(:func:`editspecialists.evaluation.report.write_evaluation`): a rerun with the same settings
replaces them, other settings get their own. SIGTERM or SIGINT stops between batches, writing nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from editspecialists.evaluation.config_rules import validate_evaluation_config
from editspecialists.data.images import UnreadableImageError, image_to_tensor, read_rgb, resize_center_crop
from editspecialists.evaluation.families import FAMILIES, METRIC_DEFINITIONS, EvalBatch, FamilySettings, parse_metrics
from editspecialists.evaluation.images import resize_center_crop as align_tensors
from editspecialists.evaluation.pairs import EvalItem, pair_edits
from editspecialists.command_line import command_with
from editspecialists.evaluation.report import csv_bytes, report_png_bytes, summarise, write_evaluation
from editspecialists.model_ids import explain_loading, model_ids_of
from editspecialists.precision import dtype_named
from editspecialists.rewards.masks import MASK_KEYS, MaskPredictor, whole_frame_masks
from editspecialists.stopping import StopOnSignal, Stopped, signal_name

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_name(input_name: str, style_name: str) -> str:
    """``<input>_<style>``: the edits sub-folder and the stem of every output file."""
    return f"{input_name}_{style_name}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def load_families(selected: Sequence[str], settings: FamilySettings) -> tuple[list, dict[str, str]]:
    """``([(spec, family)], {skipped metric: reason})`` for the families holding a selected metric.

    Loading failures (missing package, model files, hub access) skip that family's metrics with
    one warning line.
    """
    loaded, skipped = [], {}
    for name, spec in FAMILIES.items():
        wanted = [m for m in spec.metrics if m in selected]
        if not wanted:
            continue
        try:
            with explain_loading(model_ids_of({"models": settings.models}, spec.model_keys)):
                loaded.append((spec, spec.build(settings)))
        except Exception as err:  # any load failure only skips this family
            reason = _first_line(err)
            logger.warning("skipping %s (%s): %s", ", ".join(wanted), name, reason)
            skipped.update({m: reason for m in wanted})
    return loaded, skipped


class MaskSource:
    """Input/style masks (bool ``(H, W)``), predicted once per (file, size) and reused."""

    def __init__(self, predictor, whole_frame: bool):
        self.predictor, self.whole_frame = predictor, whole_frame
        self.cache: dict[tuple[Path, tuple[int, int]], torch.Tensor] = {}

    def masks(self, files: Sequence[Path], images: torch.Tensor, name: str) -> torch.Tensor:
        """Masks ``(B, H, W)`` of ``name`` in ``images (B, 3, H, W)`` (one file per image)."""
        size = tuple(images.shape[-2:])
        if self.whole_frame:
            return whole_frame_masks(images)
        missing = [i for i, f in enumerate(files) if (f, size) not in self.cache]
        unique = list({files[i]: i for i in missing}.values())
        if unique:
            predicted = self.predictor(images[unique], [name] * len(unique)).masks
            self.cache.update({(files[i], size): mask for i, mask in zip(unique, predicted)})
        return torch.stack([self.cache[f, size] for f in files]).to(images.device)


def load_mask_source(config, settings: FamilySettings) -> MaskSource:
    """Grounded-SAM2 masks (detector + segmenter of ``config.models``), unless ``whole_frame``."""
    if config.whole_frame:
        return MaskSource(None, whole_frame=True)
    with explain_loading(model_ids_of(config, MASK_KEYS)):
        predictor = MaskPredictor.from_pretrained(
            config.models.detector,
            config.models.segmenter,
            device=settings.device,
            dtype=settings.dtype,
            box_threshold=config.box_threshold,
            text_threshold=config.text_threshold,
        )
    return MaskSource(predictor, whole_frame=False)


def drop_mask_families(families: list, err: Exception, selected: Sequence[str], skipped: dict[str, str]) -> list:
    """Skip (one line each) the families that need masks when the mask models cannot be loaded."""
    reason = f"mask models unavailable: {_first_line(err)}"
    kept = []
    for spec, family in families:
        if spec.needs_masks:
            wanted = [m for m in spec.metrics if m in selected]
            logger.warning("skipping %s: %s", ", ".join(wanted), reason)
            skipped.update({m: reason for m in wanted})
        else:
            kept.append((spec, family))
    return kept


def load_images(items: Sequence[EvalItem]) -> tuple[list[EvalItem], dict[Path, Image.Image], dict[str, str]]:
    """Decode every edit, input and style file once: ``(items whose three files decode, {file: image},
    {edit file name: why it cannot be scored} for the others)``."""
    images, unreadable = {}, {}
    for file in dict.fromkeys(f for item in items for f in (item.edit, item.input, item.style)):
        try:
            images[file] = read_rgb(file)
        except UnreadableImageError as error:
            unreadable[file] = error.reason
    scorable, left_out = [], {}
    for item in items:
        reasons = [f"unreadable: {unreadable[item.edit]}"] if item.edit in unreadable else []
        reasons += [f"its {role} {file.name} is unreadable: {unreadable[file]}"
                    for role, file in (("input", item.input), ("style", item.style)) if file in unreadable]
        if reasons:
            left_out[item.edit.name] = "; ".join(reasons)
        else:
            scorable.append(item)
    return scorable, images, left_out


def report_left_out(edit_dir: Path, left_out: dict[str, str], listed: int) -> None:
    """One warning naming every edit of ``edit_dir`` that is not scored and why."""
    if left_out:
        logger.warning("not scoring %d edit(s) of %s (%d listed): %s", len(left_out), edit_dir, listed,
                       "; ".join(f"{name} ({reason})" for name, reason in left_out.items()))


def models_of(items: Sequence[EvalItem]) -> list[dict | None]:
    """The distinct model records of ``items`` (None: an edit whose model is not recorded)."""
    models = []
    for item in items:
        if item.model not in models:
            models.append(item.model)
    return models


def batches_by_size(items: Sequence[EvalItem], images: dict[Path, Image.Image], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``items`` in batches of at most ``batch_size`` edits sharing one size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(images[item.edit].size, []).append(index)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


def _aligned(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    return align_tensors(image_to_tensor(image)[None], size)[0]


def make_batch(items: Sequence[EvalItem], images: dict[Path, Image.Image], input_name: str,
               device: torch.device, data_resize: int = 0, resize_filter: str = "bilinear") -> EvalBatch:
    """With ``data_resize``, edits, inputs and styles each resized (short side) and centre-cropped
    to it with ``resize_filter`` (the original's evaluation transform, the training one); with 0,
    edits as they are, inputs and styles resized/cropped to the edits' size."""
    if data_resize:
        def load(file):
            return image_to_tensor(resize_center_crop(images[file], data_resize, resize_filter))
        edits = torch.stack([load(item.edit) for item in items])
        inputs, styles = ([load(getattr(item, role)) for item in items] for role in ("input", "style"))
    else:
        edits = torch.stack([image_to_tensor(images[item.edit]) for item in items])
        size = tuple(edits.shape[-2:])
        inputs, styles = ([_aligned(images[getattr(item, role)], size) for item in items]
                          for role in ("input", "style"))
    return EvalBatch(
        edits=edits.to(device),
        inputs=torch.stack(inputs).to(device),
        styles=torch.stack(styles).to(device),
        prompts=[item.prompt for item in items],
        input_names=[input_name] * len(items),
    )


def score_all(items, images, families, masks: MaskSource | None, selected: Sequence[str], config,
              device: torch.device, stop: StopOnSignal | None = None) -> dict[str, list[float]]:
    """Per-image values ``{metric: [value per item]}`` of every loaded family's selected metrics;
    :class:`Stopped` between batches when ``stop`` was requested (nothing is written)."""
    names = [m for spec, _ in families for m in spec.metrics if m in selected]
    per_image = {name: [math.nan] * len(items) for name in names}
    batches = list(batches_by_size(items, images, config.batch_size))
    for done, indices in enumerate(tqdm(batches, desc="evaluating", unit="batch")):
        if stop is not None and stop.requested():
            raise Stopped(f"stopped by {signal_name(stop.signum)} after {done} of {len(batches)} batches; nothing was "
                          f"written to {config.eval_savedir}. Evaluate with: {command_with({})}", stop.signum)
        chunk = [items[i] for i in indices]
        batch = make_batch(chunk, images, config.input_name, device, config.data_resize, config.resize_filter)
        if masks is not None:
            batch.input_masks = masks.masks([it.input for it in chunk], batch.inputs, config.input_name)
            batch.style_masks = masks.masks([it.style for it in chunk], batch.styles, config.style_name)
        for _, family in families:
            for name, values in family(batch).items():
                if name in per_image:
                    for index, value in zip(indices, values.float().cpu().tolist()):
                        per_image[name][index] = value
    return per_image


@dataclass
class ScoredEdits:
    """An edits folder scored: the scored items, their decoded images, ``per_image`` values
    (``{metric: [value per item]}``), the metrics ``skipped`` with why, and the JSON ``header``
    (what was scored, by which models, what was left out)."""

    items: list[EvalItem]
    images: dict[Path, Image.Image]
    per_image: dict[str, list[float]]
    skipped: dict[str, str]
    header: dict


def score_edits(config) -> ScoredEdits:
    """Pair the edits of ``<sample_savedir>/<input>_<style>/`` and score them with the selected metrics."""
    validate_evaluation_config(config)
    selected = parse_metrics(config.metrics)
    name = run_name(config.input_name, config.style_name)
    edit_dir = Path(config.sample_savedir) / name
    pairing = pair_edits(edit_dir, config.inputimg_dir, config.styleimg_dir,
                         config.input_name, config.style_name, config.seed)
    items, images, unreadable = load_images(pairing.items)
    left_out = dict(sorted({**pairing.left_out, **unreadable}.items()))
    report_left_out(edit_dir, left_out, pairing.listed)
    if not items:
        raise ValueError(f"no edit of {edit_dir} can be scored: "
                         + "; ".join(f"{edit} ({reason})" for edit, reason in left_out.items()))
    settings = FamilySettings(config.models, resolve_device(config.device), dtype_named(config.dtype, "dtype"),
                              structural_align=config.structural_align, patch_slicing=config.patch_slicing,
                              hps_autocast=config.hps_autocast)
    families, skipped = load_families(selected, settings)
    masks = None
    if any(spec.needs_masks for spec, _ in families):
        try:
            masks = load_mask_source(config, settings)
        except Exception as err:  # only the mask-based metrics are lost
            families = drop_mask_families(families, err, selected, skipped)
    with StopOnSignal("finishing the current batch, then stopping without writing") as stop:
        per_image = score_all(items, images, families, masks, selected, config, settings.device, stop)
    header = {
        "metric_definitions": METRIC_DEFINITIONS,
        "input_name": config.input_name,
        "style_name": config.style_name,
        "prompt": items[0].prompt,
        "edits": str(edit_dir.resolve()),
        "models": models_of(items),
        "edits_listed": pairing.listed,
        "edits_scored": len(items),
        "edits_not_scored": left_out,
        "whole_frame": bool(config.whole_frame),
        "data_resize": config.data_resize,
        "resize_filter": config.resize_filter,
        "patch_slicing": config.patch_slicing,
    }
    return ScoredEdits(items, images, per_image, skipped, header)


def evaluate(config) -> dict:
    """Run the evaluation described by ``config`` (see ``config/eval.py``); returns the JSON payload."""
    scored = score_edits(config)
    summary = summarise(scored.per_image)
    payload = {**scored.header, "metrics": summary, "skipped": scored.skipped,
               "settings": {"config": config.to_dict(), "models": scored.header["models"]}}
    files = {"_per_image.csv": csv_bytes(scored.items, scored.per_image),
             "_report.png": report_png_bytes(scored.items, scored.images, scored.per_image,
                                             max_rows=config.report_rows)}
    written = write_evaluation(Path(config.eval_savedir), run_name(config.input_name, config.style_name), payload,
                               files, f"Earlier evaluations are intact. Free some space, then run: {command_with({})}")
    for metric, stats in summary.items():
        logger.info("%s: mean %s, std %s, count %d", metric, stats["mean"], stats["std"], stats["count"])
    logger.info("scored %d of %d edits; wrote %s", len(scored.items), scored.header["edits_listed"], written)
    return {**scored.header, "metrics": summary, "skipped": scored.skipped}
