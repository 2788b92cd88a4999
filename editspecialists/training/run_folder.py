"""Where a run writes, and how a resumed run continues its folder.

- A new run writes ``<logdir>/<run_name>`` (``run_name`` empty: the date and time, made unique);
  a folder that already holds a run (its ``config.json``) is refused rather than appended to.
- A resumed run (``load_checkpoint``) *continues* the checkpoint's run folder when ``run_name`` is
  empty or ``<logdir>/<run_name>`` is that folder: its ``config.json`` is kept (it says how the run
  was trained), the resume's config is written beside it as ``config_resume_<epoch>.json``, and
  the metrics and validation rows of the epochs to be redone are removed, so every epoch has one
  set of rows (a validation after the resumed epoch, of the resumed weights, is kept).
  A folder with checkpoints newer than the resumed one is refused (resuming would replace them).
- A resumed run with another ``<logdir>/<run_name>`` *branches*: a new folder whose
  ``config.json`` is the resume's config and whose metrics and validation rows start with the
  parent's rows of the epochs before the resume point.

Every resume appends a line to ``resumes.jsonl`` (checkpoint resumed, epoch, config file) so a
folder names its parent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from editspecialists.training import checkpoint as ckpt
from editspecialists.training.tracking import METRICS_FILE
from editspecialists.training.validation import VALIDATION_FILE

RESUMES = "resumes.jsonl"


def choose_run_dir(config, checkpoint: Path | None) -> Path:
    """The folder this run writes to (see the module docstring); a clear error where writing
    there would mix two runs or replace newer checkpoints."""
    named = Path(config.logdir) / config.run_name if config.run_name else None
    if checkpoint is not None:
        parent = ckpt.run_folder_of(checkpoint)
        if named is None or named.resolve() == parent.resolve():
            refuse_newer_checkpoints(parent, checkpoint)
            return parent
    run_dir = named or unused_timestamp_folder(Path(config.logdir))
    if (run_dir / ckpt.RUN_CONFIG).is_file():
        raise ValueError(f"{run_dir} already holds a run: resume it with --config.load_checkpoint={run_dir}, "
                         f"or choose another run_name")
    return run_dir


def unused_timestamp_folder(logdir: Path) -> Path:
    """``<logdir>/<date_time>``, with ``_2``, ``_3``... when runs start within the same second."""
    stamp = time.strftime("%Y.%m.%d_%H.%M.%S")
    candidates = (logdir / (stamp if n == 1 else f"{stamp}_{n}") for n in range(1, 1000))
    return next(folder for folder in candidates if not folder.exists())


def refuse_newer_checkpoints(run_dir: Path, checkpoint: Path) -> None:
    """Refuse to continue ``run_dir`` from ``checkpoint`` when it has newer checkpoints that
    verify (newer ones that do not are damaged: the run replaces them)."""
    checkpoints = ckpt.list_checkpoints(run_dir)
    names = [c.name for c in checkpoints]
    later = checkpoints[names.index(checkpoint.name) + 1:] if checkpoint.name in names else []
    newer = [c.name for c in later if ckpt.verifies(c)]
    if newer:
        raise ValueError(f"{run_dir} has checkpoints newer than {checkpoint.name} ({', '.join(newer)}): continuing "
                         f"it from there would replace them; resume the newest (--config.load_checkpoint={run_dir}) "
                         f"or write to a new folder with --config.run_name=NAME")


def start_run_folder(run_dir: Path, config_json: str, checkpoint: Path | None, first_epoch: int) -> None:
    """Write the run's config and, for a resumed run, its resume record and metrics (main process)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        (run_dir / ckpt.RUN_CONFIG).write_text(config_json)
        return
    parent = ckpt.run_folder_of(checkpoint)
    continuing = run_dir.resolve() == parent.resolve()
    config_file = f"config_resume_{first_epoch:04d}.json" if continuing else ckpt.RUN_CONFIG
    (run_dir / config_file).write_text(config_json)
    for rows_file in (METRICS_FILE, VALIDATION_FILE):
        keep_rows_before(parent / rows_file, run_dir / rows_file, first_epoch)
    with open(run_dir / RESUMES, "a") as handle:
        handle.write(json.dumps({"checkpoint": str(checkpoint), "epoch": first_epoch, "config": config_file,
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def keep_rows_before(source: Path, target: Path, first_epoch: int) -> None:
    """Write to ``target`` the rows of ``source`` (metrics or validation) from epochs before
    ``first_epoch`` (written aside, then renamed; nothing when ``source`` is missing). A row cut
    short by a kill is dropped."""
    if not source.is_file():
        return
    rows = [line for line in source.read_text().splitlines(keepends=True) if epoch_of(line) < first_epoch]
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("".join(rows))
    tmp.replace(target)


def epoch_of(line: str) -> float:
    """The epoch of a metrics or validation row (a validation after k epochs belongs to epoch
    k - 1); infinity for a blank line or a row cut short by a kill."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return float("inf")
    return row["after_epochs"] - 1 if "after_epochs" in row else row.get("epoch", 0)


def describe_run_folder(run_dir: Path) -> str:
    """The last console line of a training run: its folder and what it holds (metrics, one image
    grid per epoch, the newest checkpoint)."""
    checkpoints = ckpt.list_checkpoints(run_dir)
    newest = f"{ckpt.CHECKPOINTS}/{checkpoints[-1].name}" if checkpoints else "no checkpoint"
    return f"run folder {run_dir}: {METRICS_FILE}, images/, {newest}"
