"""Base model vs specialist in one command: ``evaluate.py --config.base_vs_specialist=<run or checkpoint>``.

Both models edit the run's held-out inputs (``val.inputimg_dir``, or the ``val.fraction`` split of
its input folder), or the images of ``compare_inputimg_dir``, with the same prompts, style images
and noise seeds (``val.seeds`` per input, or ``compare_seeds``, planned as its held-out validation
plans them), through generate.py's code; both edit folders are scored by evaluate.py's code with
every metric of the evaluation config. Per metric: the two means, the paired mean difference
(specialist - base) over the edits and its standard error, and the verdict
(:func:`editspecialists.paired.verdict`). Written as
``<eval_savedir>/<input>_<style>_base_vs_specialist/`` (``..._on_<folder name>/`` for a
``compare_inputimg_dir``): ``base/`` and ``specialist/`` edits, ``comparison.json``,
``comparison.csv``, written together by :func:`~editspecialists.evaluation.report.write_evaluation`,
and printed as a table.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
from pathlib import Path

from editspecialists.command_line import command_with
from editspecialists.data.held_out import HeldOut, folder_of_their_own, held_out_inputs
from editspecialists.evaluation.evaluator import ScoredEdits, run_name, score_edits
from editspecialists.evaluation.families import LOWER_IS_BETTER, METRIC_DEFINITIONS
from editspecialists.evaluation.report import write_evaluation
from editspecialists.generation import generate_edits
from editspecialists.paired import paired_difference, verdict
from editspecialists.formats import checkpoint as ckpt

logger = logging.getLogger(__name__)

MODELS = ("base", "specialist")


def run_held_out(checkpoint: Path, trained) -> HeldOut:
    """The held-out inputs of the run that wrote ``checkpoint`` (config ``trained``); an error naming
    the key when it has none."""
    held_out, reason = held_out_inputs(trained.inputimg_dir, trained.val.inputimg_dir, trained.val.fraction)
    if held_out is None:
        raise ValueError(f"--config.base_vs_specialist: the run of {checkpoint} has {reason}; "
                         f"nothing to compare on that it was not trained on")
    return held_out


def comparison_inputs(config, checkpoint: Path, trained) -> tuple[HeldOut, int]:
    """(the inputs both models edit, edits per input): ``config.compare_inputimg_dir``'s images
    ``compare_seeds`` times each (0: the run's ``val.seeds``), or the run's held-out inputs; an error
    naming the key when the folder is the one the run trained on."""
    folder = config.compare_inputimg_dir
    if not folder:
        return run_held_out(checkpoint, trained), trained.val.seeds
    held_out = folder_of_their_own(folder, trained.inputimg_dir, "compare_inputimg_dir",
                                   f"compare on images the run of {checkpoint} never trained on")
    return held_out, config.compare_seeds or trained.val.seeds


def comparison_folder(config, trained) -> Path:
    """``<eval_savedir>/<input>_<style>_base_vs_specialist``, with ``_on_<folder name>`` for a
    ``compare_inputimg_dir`` (so comparisons on different images never share edit folders)."""
    name = f"{run_name(trained.input_name, trained.style_name)}_base_vs_specialist"
    if config.compare_inputimg_dir:
        name += f"_on_{Path(config.compare_inputimg_dir).expanduser().resolve().name}"
    return Path(config.eval_savedir) / name


def generation_config(trained, held_out: HeldOut, folder: Path, checkpoint: str):
    """The run's config set to edit its held-out inputs into ``folder`` with ``checkpoint`` ("" for
    the base model), keeping earlier edits of the same model (a rerun finishes, never redoes)."""
    config = copy.deepcopy(trained)
    config.inputimg_dir = str(held_out.folder)
    config.sample.sample_savedir = str(folder)
    config.load_checkpoint = checkpoint
    config.overwrite = False
    return config


def scoring_config(config, trained, held_out: HeldOut, folder: Path):
    """The evaluation config set to score the edits under ``folder`` of the run's held-out inputs."""
    scoring = copy.deepcopy(config)
    scoring.sample_savedir = str(folder)
    scoring.inputimg_dir = str(held_out.folder)
    scoring.styleimg_dir = trained.styleimg_dir
    scoring.input_name, scoring.style_name = trained.input_name, trained.style_name
    return scoring


def compare_metrics(base: ScoredEdits, specialist: ScoredEdits) -> tuple[dict[str, dict], list[dict]]:
    """Per metric the means, the paired difference and the verdict over the edits both scored
    (paired by edit file name), and one row per edit with both models' values."""
    base_rows = {item.edit.name: index for index, item in enumerate(base.items)}
    pairs = [(base_rows[item.edit.name], index, item) for index, item in enumerate(specialist.items)
             if item.edit.name in base_rows]
    metrics, rows = {}, []
    for name in [m for m in specialist.per_image if m in base.per_image]:
        base_values = [base.per_image[name][b] for b, _, _ in pairs]
        specialist_values = [specialist.per_image[name][s] for _, s, _ in pairs]
        difference = paired_difference(specialist_values, base_values)
        lower = name in LOWER_IS_BETTER
        metrics[name] = {"base": mean_of(base_values), "specialist": mean_of(specialist_values),
                         "delta": difference.mean, "delta_se": difference.se, "count": difference.count,
                         "lower_is_better": lower, "verdict": verdict(difference, lower)}
    for b, s, item in pairs:
        rows.append({"edit": item.edit.name, "input": item.input.name, "style": item.style.name,
                     **{f"{name}_{model}": scored.per_image[name][index]
                        for name in metrics for model, scored, index in (("base", base, b), ("specialist", specialist, s))}})
    return metrics, rows


def mean_of(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def comparison_table(metrics: dict[str, dict]) -> str:
    """The printed table: metric, base, specialist, difference ± SE, verdict."""
    lines = [f"{'metric':<30} {'base':>10} {'specialist':>10} {'difference':>22}  verdict"]
    for name, m in metrics.items():
        arrow = "lower is better" if m["lower_is_better"] else "higher is better"
        lines.append(f"{name:<30} {m['base']:>10.4g} {m['specialist']:>10.4g} "
                     f"{m['delta']:>+11.3g} ± {m['delta_se']:<8.2g}  {m['verdict']} ({arrow})")
    return "\n".join(lines)


def compare_with_base(config) -> dict:
    """Generate the held-out edits of the base model and of the specialist ``config.base_vs_specialist``,
    score both, and write and print the comparison; returns the JSON written (a rerun with the same
    config replaces it)."""
    checkpoint = ckpt.resolve_checkpoint(config.base_vs_specialist)
    trained = ckpt.saved_run_config(checkpoint)
    held_out, seeds = comparison_inputs(config, checkpoint, trained)
    out = comparison_folder(config, trained)
    scored = {}
    for model, path in zip(MODELS, ("", str(checkpoint))):
        folder = out / model
        generate_edits(generation_config(trained, held_out, folder, path), held_out.files, seeds)
        scored[model] = score_edits(scoring_config(config, trained, held_out, folder))
    metrics, rows = compare_metrics(scored["base"], scored["specialist"])
    payload = {"metric_definitions": METRIC_DEFINITIONS, "specialist": str(checkpoint),
               "base": {"model": trained.pretrained.model, "revision": trained.pretrained.revision},
               "held_out": {"folder": str(held_out.folder), "source": held_out.source, "inputs": held_out.files,
                            "seeds_per_input": seeds},
               "edits_compared": len(rows), "metrics": metrics,
               "skipped": {**scored["base"].skipped, **scored["specialist"].skipped},
               "settings": {"config": config.to_dict(), "specialist": str(checkpoint)}}
    written = write_evaluation(out, "comparison", payload, {".csv": rows_csv(rows)},
                               f"Earlier comparisons are intact. Free some space, then run: {command_with({})}")
    print(comparison_table(metrics))
    print(f"{len(rows)} held-out edits per model; wrote {written}")
    return json.loads(written.read_text())


def rows_csv(rows: list[dict]) -> bytes:
    """The comparison's CSV: one row per edit with both models' values."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["edit"])
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()
