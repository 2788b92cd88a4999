"""Where a run writes, and how a resumed run continues its folder.

- A new run writes ``<logdir>/<run_name>`` (``run_name`` empty: the date and time, made unique);
  a folder that already holds a run with checkpoints is refused rather than appended to. A run
  that stopped before its first checkpoint has nothing to protect: the same command starts it
  again in its folder (whose earlier files are removed, with a warning).
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
folder names its parent; it is written once the checkpoint has loaded, so a refused resume leaves
no record. A resume from a checkpoint saved within an epoch (a stopped run) keeps that epoch's
metrics rows up to its optimizer step.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from editspecialists import writing
from editspecialists.command_line import command_with
from editspecialists.formats import checkpoint as ckpt
from editspecialists.training.tracking import METRICS_FILE
from editspecialists.training.validation import VALIDATION_FILE

logger = logging.getLogger(__name__)

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
    if (run_dir / ckpt.RUN_CONFIG).is_file() and ckpt.list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds a run with checkpoints: resume it "
                         f"({command_with({'load_checkpoint': str(run_dir)})}), or choose another run_name")
    return run_dir


def continue_command(run_dir: Path) -> str:
    """The command that goes on with the run of ``run_dir``: this program's command with
    ``--config.load_checkpoint=<run_dir>`` once the folder has a checkpoint, else the same command
    (which starts a run without checkpoint again)."""
    return command_with({"load_checkpoint": str(run_dir)} if ckpt.list_checkpoints(run_dir) else {})


def after_failed_write(run_dir: Path) -> str:
    """What to do after a write of the run in ``run_dir`` failed (a full disk), as printed."""
    kept = "Earlier checkpoints are intact. " if ckpt.list_checkpoints(run_dir) else ""
    return f"{kept}Free some space, then run: {continue_command(run_dir)}"


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
    """Write the run's config and, for a resumed run, its resume record and metrics (main process).
    A failed write raises :func:`writing.write_failure` naming the folder."""
    try:
        if checkpoint is None:
            start_new_run(run_dir, config_json)
        else:
            record_resume(run_dir, config_json, checkpoint, first_epoch)
    except writing.WRITE_ERRORS as error:
        raise writing.write_failure(run_dir, "run folder", writing.failure_reason(error), len(config_json),
                                    after_failed_write(run_dir)) from error


def start_new_run(run_dir: Path, config_json: str) -> None:
    """Create ``run_dir`` with the run's config; the files of a run that stopped there before its
    first checkpoint are removed first (:func:`choose_run_dir` refuses a folder with checkpoints)."""
    if (run_dir / ckpt.RUN_CONFIG).is_file():
        logger.warning("%s holds a run that stopped before its first checkpoint: starting it again there "
                       "(its files are replaced)", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ckpt.RUN_CONFIG).write_text(config_json)


def record_resume(run_dir: Path, config_json: str, checkpoint: Path, first_epoch: int) -> None:
    """The resume's config (``config_resume_<checkpoint>.json`` beside the run's own, or the
    branch's ``config.json``), the metrics rows before the resume point and a line of
    ``resumes.jsonl``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    parent = ckpt.run_folder_of(checkpoint)
    continuing = run_dir.resolve() == parent.resolve()
    config_file = f"config_resume_{checkpoint.name.removeprefix('checkpoint_')}.json" if continuing else ckpt.RUN_CONFIG
    (run_dir / config_file).write_text(config_json)
    state = ckpt.read_trainer_state(checkpoint)
    within_step = state["global_step"] if "within_epoch" in state else None
    for rows_file in (METRICS_FILE, VALIDATION_FILE):
        keep_rows_before(parent / rows_file, run_dir / rows_file, first_epoch, within_step)
    with open(run_dir / RESUMES, "a") as handle:
        handle.write(json.dumps({"checkpoint": str(checkpoint), "epoch": first_epoch, "config": config_file,
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def keep_rows_before(source: Path, target: Path, first_epoch: int, within_step: int | None = None) -> None:
    """Write to ``target`` the rows of ``source`` (metrics or validation) that precede the resume
    point (:func:`kept_row`), written aside, then renamed; nothing when ``source`` is missing."""
    if not source.is_file():
        return
    rows = [line for line in source.read_text().splitlines(keepends=True)
            if kept_row(line, first_epoch, within_step)]
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("".join(rows))
    tmp.replace(target)


def kept_row(line: str, first_epoch: int, within_step: int | None) -> bool:
    """Whether a metrics or validation row precedes the resume point: a row of an epoch before
    ``first_epoch`` (:func:`epoch_of`) or, for a resume within ``first_epoch`` after optimizer step
    ``within_step``, a metrics row of that epoch up to that step."""
    epoch = epoch_of(line)
    if epoch < first_epoch:
        return True
    if within_step is None or epoch != first_epoch:
        return False
    row = json.loads(line)
    return "after_epochs" not in row and row.get("step", 0) <= within_step


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
