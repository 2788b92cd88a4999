"""Held-out validation during training: the same edits of images the run never trains on, at
fixed points of the run, each compared edit by edit with the base model's.

Every held-out input (:mod:`editspecialists.data.held_out`) is edited ``val.seeds`` times with a
fixed style image, prompt and noise seeds (:mod:`editspecialists.data.edit_plan`, as generate.py
plans its edits), so every validation edits the same things. Validation runs before the first
update (``after_epochs`` 0: the policy's initial weights, which are the base model's), every
``val.every`` epochs and after the last epoch. Each edit is scored with the run's own scores and
the method's others (``val.scores``) by the training scorer itself.

Outputs, in the run folder: ``validation.jsonl`` (one row per held-out edit and validation),
a summary per validation in ``metrics.jsonl`` (``val/<score>_mean``, ``_std``, and the paired
difference from the base with its standard error, ``_delta``, ``_delta_se``), one console line, and
``validation/after_NNN.png`` (input | base edit | current edit, same seed; each held-out input's first
seed first, so the grid spans the inputs).

The held-out items are shared out among processes and the rows gathered, so a run on several
processes writes the rows of a one-process run; every edit has its own seed, so an edit does not
depend on which others are sampled with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from editspecialists.data.edit_plan import plan_edits
from editspecialists.data.held_out import HeldOut
from editspecialists.data.images import DEFAULT_RESIZE_FILTER, load_image_folder
from editspecialists.data.manifest import write_then_rename
from editspecialists.paired import PairedDifference, paired_difference, verdict
from editspecialists.rewards.constants import image_keys
from editspecialists.training.gather import gather_list
from editspecialists.launch import console_line
from editspecialists.training.tracking import labelled_grid

VALIDATION_FILE = "validation.jsonl"
VALIDATION_DIR = "validation"
# The per-image constants' role of held-out inputs (not "input": a held-out folder of its own may
# hold a file named like a training input).
HELD_OUT_ROLE = "held_out"
GRID_ROWS = 8

# edit_fn(items, inputs (n, 3, S, S), styles (n, 3, S, S), reference) -> edits (n, 3, S, S)
EditFn = Callable[[list[dict], torch.Tensor, torch.Tensor, bool], torch.Tensor]
# score_fn(edits (n, 1, 3, S, S), inputs, styles, input_keys, style_keys) -> {score: (n, 1)}
ScoreFn = Callable[..., dict[str, torch.Tensor]]


@dataclass
class ValidationSet:
    """The fixed edits of every validation, one item per (held-out input, seed), input-major.

    items: :func:`~editspecialists.data.edit_plan.plan_edits` entries; inputs, styles:
    ``(N, 3, S, S)`` in [0, 1], row i the images of item i.
    """

    held_out: HeldOut
    items: list[dict]
    inputs: torch.Tensor
    styles: torch.Tensor

    def __len__(self) -> int:
        return len(self.items)

    def grid_indices(self, rows: int = GRID_ROWS) -> list[int]:
        """The items the validation grid shows: each input's first seed, then each input's second
        (and so on), ``rows`` of them, so that the grid spans the held-out inputs."""
        order = sorted(range(len(self.items)), key=lambda index: (self.items[index]["seed_index"], index))
        return order[:rows]

    def distinct_inputs(self) -> tuple[list[str], torch.Tensor]:
        """(file names, images ``(n, 3, S, S)``) of the held-out inputs, once each."""
        first = {item["input"]: index for index, item in reversed(list(enumerate(self.items)))}
        order = sorted(first.values())
        return [self.items[index]["input"] for index in order], self.inputs[order]


def load_validation_set(held_out: HeldOut, style_dir: str | Path, size: int, *, seed: int, input_name: str,
                        style_name: str, generation_prompt: str, seeds_per_input: int,
                        resize_filter: str = DEFAULT_RESIZE_FILTER) -> ValidationSet:
    """Read the held-out inputs and the style images (resized like training's, with
    ``resize_filter``) and plan their edits; unreadable files are skipped with one warning, as in
    training."""
    wanted = set(held_out.files)
    input_paths, inputs = load_image_folder(held_out.folder, size, "held-out input image", wanted.__contains__,
                                            resize_filter=resize_filter)
    style_paths, styles = load_image_folder(style_dir, size, "style image", resize_filter=resize_filter)
    items = plan_edits(seed, [p.name for p in input_paths], [p.name for p in style_paths], input_name, style_name,
                       generation_prompt, seeds_per_input)
    input_row = {path.name: row for row, path in enumerate(input_paths)}
    style_row = {path.name: row for row, path in enumerate(style_paths)}
    return ValidationSet(held_out, items, inputs[[input_row[item["input"]] for item in items]],
                         styles[[style_row[item["style"]] for item in items]])


def validation_due(after_epochs: int, every: int, num_epochs: int) -> bool:
    """Whether a validation runs after ``after_epochs`` epochs: before the first (0), every
    ``every`` epochs and after the last; never with ``every`` 0."""
    return every > 0 and (after_epochs % every == 0 or after_epochs == num_epochs)


def validation_cost(num_edits: int, num_steps: int, images_per_epoch: int, nb_gen: int, trained_timesteps: int) -> float:
    """A validation's share of an epoch's denoiser work (both over all processes).

    A validation samples ``num_edits`` edits of ``num_steps`` steps; an epoch samples
    ``images_per_epoch x nb_gen`` edits of ``num_steps`` steps and trains on ``trained_timesteps``
    steps of each, a training step costing about 4 sampling steps (the policy's forward and
    backward, about 3, and the reference's forward). Feedback and decoding are left out.
    """
    epoch = images_per_epoch * nb_gen * (num_steps + 4 * trained_timesteps)
    return num_edits * num_steps / epoch


def describe_validation(vset: ValidationSet | None, reason: str, every: int, cost: float) -> str:
    """The start-up line: how many held-out inputs and edits, when, and the cost; or why none."""
    if vset is None:
        return f"held-out validation off: {reason}"
    inputs = len({item["input"] for item in vset.items})
    where = (f"{vset.held_out.folder}" if vset.held_out.source == "val.inputimg_dir"
             else f"split off {vset.held_out.folder} by val.fraction, never trained on")
    return (f"held-out validation: {inputs} inputs ({where}) x {len(vset) // max(1, inputs)} seeds = {len(vset)} "
            f"edits, before training, every {every} epochs and after the last; each about {cost:.2f} of an "
            f"epoch's denoising work (val.every trades it)")


def read_rows(path: Path) -> list[dict]:
    """The rows of a ``validation.jsonl`` (none when missing; a row cut short by a kill is dropped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    """Add ``rows`` to ``validation.jsonl`` (the whole file written aside, then renamed: a kill never
    leaves half a validation in it)."""
    text = "".join(json.dumps(row) + "\n" for row in [*read_rows(path), *rows])
    write_then_rename(path, lambda tmp: tmp.write_text(text))


def edit_key(row: dict) -> tuple[str, int]:
    """What pairs two validations' edits: the held-out input and the noise seed."""
    return row["input"], row["seed"]


def summarise(rows: list[dict], base_rows: list[dict], directions: dict[str, bool]) -> dict[str, float]:
    """``val/<score>_mean``, ``_std`` (population) over ``rows``, and the paired difference from the
    base's rows of the same edits, ``_delta`` and ``_delta_se`` (NaN without base rows), per score of
    ``directions`` (score -> lower is better)."""
    base = {edit_key(row): row for row in base_rows}
    summary = {}
    for name in directions:
        values = [float(row[name]) for row in rows]
        mean = sum(values) / len(values)
        summary[f"val/{name}_mean"] = mean
        summary[f"val/{name}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        paired = [(float(row[name]), float(base[edit_key(row)][name])) for row in rows if edit_key(row) in base]
        difference = paired_difference([c for c, _ in paired], [b for _, b in paired])
        summary[f"val/{name}_delta"], summary[f"val/{name}_delta_se"] = difference.mean, difference.se
    return summary


def validation_line(after_epochs: int, num_edits: int, summary: dict[str, float], directions: dict[str, bool]) -> str:
    """One console line: per score the mean and, after training started, the paired difference
    from the base, its standard error and the verdict (:func:`editspecialists.paired.verdict`)."""
    if after_epochs == 0:
        head = f"validation of the base model ({num_edits} held-out edits)"
        parts = [f"{name} {summary[f'val/{name}_mean']:.4g}" for name in directions]
    else:
        head = f"validation after {after_epochs} epochs ({num_edits} held-out edits) vs base"
        parts = []
        for name, lower in directions.items():
            delta, se = summary[f"val/{name}_delta"], summary[f"val/{name}_delta_se"]
            word = verdict(PairedDifference(delta, se, num_edits if math.isfinite(delta) else 0), lower)
            parts.append(f"{name} {summary[f'val/{name}_mean']:.4g} ({delta:+.3g} ± {se:.2g}: {word})")
    return " | ".join([head, *parts])


def grid_labels(row: dict, names: list[str]) -> str:
    """A grid tile's caption: the first three scores of a validation row."""
    return "\n".join(f"{name} {float(row[name]):.3f}" for name in names[:3])


class Validation:
    """The validations of one run (every process holds one; the main process writes).

    ``directions``: the scores reported, name -> lower is better. ``done``: the ``after_epochs`` of
    the validations already in ``validation.jsonl`` (a resumed run does not redo them).
    """

    def __init__(self, vset: ValidationSet, *, every: int, num_epochs: int, run_dir: Path,
                 directions: dict[str, bool], accelerator, run_logger):
        from accelerate.utils import broadcast_object_list

        self.vset, self.every, self.num_epochs = vset, every, num_epochs
        self.path = Path(run_dir) / VALIDATION_FILE
        self.directions, self.accelerator, self.run_logger = directions, accelerator, run_logger
        rows = read_rows(self.path) if accelerator.is_main_process else []
        self.base_rows = [row for row in rows if row.get("after_epochs") == 0]
        done = [sorted({row["after_epochs"] for row in rows})]
        broadcast_object_list(done)
        self.done = set(done[0])
        self.grid = vset.grid_indices()
        self.base_edits: torch.Tensor | None = None  # the grid rows' base edits, kept once made

    def due(self, after_epochs: int) -> bool:
        return validation_due(after_epochs, self.every, self.num_epochs) and after_epochs not in self.done

    def run(self, after_epochs: int, edit_fn: EditFn, score_fn: ScoreFn, batch_size: int) -> dict | None:
        """Edit and score this process's share of the held-out items, gather every process's rows;
        on the main process write them, log the summary, print the line and save the grid (returns
        the summary there, None elsewhere)."""
        acc, vset = self.accelerator, self.vset
        mine = list(range(acc.process_index, len(vset), acc.num_processes))
        rows, grid_edits = [], []
        for start in range(0, len(mine), batch_size):
            index = mine[start:start + batch_size]
            items = [vset.items[i] for i in index]
            inputs, styles = vset.inputs[index], vset.styles[index]
            edits = edit_fn(items, inputs, styles, False)
            scores = score_fn(edits[:, None], inputs, styles,
                              image_keys(HELD_OUT_ROLE, [item["input"] for item in items], inputs),
                              image_keys("style", [item["style"] for item in items], styles))
            for row, (i, item) in enumerate(zip(index, items)):
                rows.append((i, {"after_epochs": after_epochs, "input": item["input"], "seed": item["seed"],
                                 "style": item["style"], "prompt": item["prompt"],
                                 **{name: float(scores[name][row, 0]) for name in self.directions}}))
                if i in self.grid:
                    grid_edits.append((self.grid.index(i), edits[row].cpu()))
        rows = [row for _, row in sorted(gather_list(acc, rows), key=lambda pair: pair[0])]
        grid_edits = torch.stack([edit for _, edit in sorted(gather_list(acc, grid_edits), key=lambda p: p[0])])
        self.done.add(after_epochs)
        if not acc.is_main_process:
            return None
        return self.report(after_epochs, rows, grid_edits, edit_fn)

    def report(self, after_epochs: int, rows: list[dict], grid_edits: torch.Tensor, edit_fn: EditFn) -> dict:
        """Write the rows, log the summary and the grid, print the console line (main process)."""
        append_rows(self.path, rows)
        if after_epochs == 0:
            self.base_rows = rows
        summary = summarise(rows, self.base_rows, self.directions)
        self.run_logger.log({"after_epochs": after_epochs, **summary})
        console_line(validation_line(after_epochs, len(rows), summary, self.directions))
        self.save_grid(after_epochs, rows, grid_edits, edit_fn)
        return summary

    def save_grid(self, after_epochs: int, rows: list[dict], edits: torch.Tensor, edit_fn: EditFn) -> None:
        """``validation/after_NNN.png``: input | base edit | current edit of the grid's items
        (:meth:`ValidationSet.grid_indices`); ``edits`` are theirs, in that order."""
        grid, vset = self.grid, self.vset
        if self.base_edits is None:
            # the base model's edits: this validation's at 0, else remade once with the frozen reference
            self.base_edits = edits if after_epochs == 0 else edit_fn(
                [vset.items[index] for index in grid], vset.inputs[grid], vset.styles[grid], True).cpu()
        base = {edit_key(row): row for row in self.base_rows}
        names = list(self.directions)
        tiles, labels = [], []
        for position, index in enumerate(grid):
            item, row = vset.items[index], rows[index]
            tiles.append([vset.inputs[index], self.base_edits[position], edits[position]])
            base_caption = grid_labels(base[edit_key(row)], names) if edit_key(row) in base else ""
            labels.append([f"{item['input']}\nseed {item['seed_index']}", f"base\n{base_caption}",
                           f"after {after_epochs}\n{grid_labels(row, names)}"])
        path = self.run_logger.run_dir / VALIDATION_DIR / f"after_{after_epochs:03d}.png"
        self.run_logger.log_image("validation", labelled_grid(tiles, labels), after_epochs, path)
