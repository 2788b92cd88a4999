"""Run logging: a local metrics.jsonl (always), wandb (when configured) and image grids."""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageDraw

from editspecialists import writing
from editspecialists.data.images import tensor_to_image

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def wandb_mode() -> str | None:
    """How wandb may run without ever prompting: ``$WANDB_MODE`` when set ("online", "offline",
    "disabled"), else "online" when credentials exist (``$WANDB_API_KEY`` or an api.wandb.ai entry
    in ~/.netrc), else None (not logged in)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return None


def start_wandb(project: str, run_dir: Path, config: dict | None, run_name: str):
    """A wandb run of ``project`` logging beside ``run_dir``'s metrics.jsonl, or None with one line
    saying why not: wandb is not installed, not logged in (:func:`wandb_mode`), or disabled."""
    local = f"logging to {run_dir / METRICS_FILE} only"
    try:
        import wandb
    except ImportError:
        logger.warning("wandb is not installed: %s (pip install wandb; wandb_project='' turns it off)", local)
        return None
    mode = wandb_mode()
    if mode is None:
        logger.warning("wandb is not logged in: %s (wandb login, or WANDB_MODE=offline for a local wandb log; "
                       "wandb_project='' turns it off)", local)
        return None
    if mode == "disabled":
        logger.info("wandb disabled by WANDB_MODE: %s", local)
        return None
    run = wandb.init(project=project, name=run_name or None, config=config, dir=str(run_dir), mode=mode)
    logger.info("wandb logging (%s mode)", mode)
    return run


class RunLogger:
    """Writes metrics from the main process only; other processes get a no-op logger.

    A failed write raises :func:`writing.write_failure` ending with ``after_failed_write()`` (what
    to do next, as the caller knows it)."""

    def __init__(self, run_dir: Path, *, enabled: bool, wandb_project: str = "", config: dict | None = None,
                 run_name: str = "", after_failed_write: Callable[[], str] = lambda: ""):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.after_failed_write = after_failed_write
        self.records: list[dict] = []  # everything logged by this run, for the console summaries
        self.wandb_run = None
        if enabled and wandb_project:
            self.wandb_run = start_wandb(wandb_project, self.run_dir, config, run_name)

    def log(self, record: dict) -> None:
        """Append one JSON object to metrics.jsonl (and wandb); tensors become floats."""
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        self.records.append(record)
        line = json.dumps(record) + "\n"

        def append(path: Path) -> None:
            with open(path, "a") as handle:
                handle.write(line)

        self.write(self.run_dir / METRICS_FILE, append, len(line))
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"})

    def log_image(self, name: str, image: Image.Image, epoch: int, path: Path | None = None) -> Path | None:
        """Save ``image`` at ``path`` (default ``images/<name>_<epoch>.png`` in the run folder) and
        send it to wandb; the path, or None off the main process."""
        if not self.enabled:
            return None
        path = path or self.run_dir / "images" / f"{name}_{epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write(path, image.save, 3 * image.width * image.height)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Image(str(path)), "epoch": epoch})
        return path

    def write(self, path: Path, write: Callable[[Path], object], needed: int):
        """``write(path)``, returned; a failure of the library writing is :func:`writing.write_failure`
        (``needed``: about the bytes it writes)."""
        try:
            return write(path)
        except writing.WRITE_ERRORS as error:
            raise writing.write_failure(path, "log", writing.failure_reason(error), needed,
                                        self.after_failed_write()) from error

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) of a duration in seconds."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def epoch_summary(epoch: int, num_epochs: int, records: list[dict], elapsed_s: float, remaining_s: float) -> str:
    """One console line for an epoch from its metrics records: each score's mean ± std, the
    preference fraction, the mask fallback fraction (when masks are predicted), the mean loss,
    clipfrac and ratio_mean over the epoch's optimizer steps, and elapsed / remaining time.
    """
    epoch_records = [r for r in records if r.get("epoch") == epoch]
    scores = next((r for r in epoch_records if "step" not in r), {})
    steps = [r for r in epoch_records if "step" in r]
    parts = [f"epoch {epoch} ({epoch + 1}/{num_epochs})"]
    for key in scores:
        if key.endswith("_mean"):
            name = key[: -len("_mean")]
            parts.append(f"{name} {scores[key]:.4g} ± {scores[name + '_std']:.2g}")
    for key in ("preference_fraction", "mask_fallback_fraction"):
        if key in scores:
            parts.append(f"{key} {scores[key]:.2f}")
    if steps:
        means = {key: sum(float(r[key]) for r in steps) / len(steps) for key in ("loss", "clipfrac", "ratio_mean")}
        parts.append(f"loss {means['loss']:.4f} clipfrac {means['clipfrac']:.2f} ratio_mean {means['ratio_mean']:.4g}"
                     f" ({len(steps)} steps)")
    parts.append(f"{format_duration(elapsed_s)} elapsed, {format_duration(remaining_s)} left")
    return " | ".join(parts)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run's metrics.jsonl."""
    with open(Path(run_dir) / METRICS_FILE) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def edit_grid(inputs: torch.Tensor, styles: torch.Tensor, edits: torch.Tensor,
              captions: list[list[str]], max_rows: int = 8, min_tile: int = 128) -> Image.Image:
    """A PNG-ready grid: one row per input with input | style | each edit, captioned.

    inputs, styles: (B, 3, H, W); edits: (B, G, 3, H, W), all in [0, 1];
    captions[b][g]: the text under edit g of input b, one line per ``\n``.
    """
    rows = min(max_rows, inputs.shape[0])
    return labelled_grid([[inputs[row], styles[row], *edits[row]] for row in range(rows)],
                         [["input", "style", *captions[row]] for row in range(rows)], min_tile)


def labelled_grid(tiles: list[list[torch.Tensor]], labels: list[list[str]], min_tile: int = 128) -> Image.Image:
    """A PNG-ready grid of images ``tiles[row][col]`` (3, H, W) in [0, 1], each with the text
    ``labels[row][col]`` under it (one line per ``\n``). Tiles smaller than ``min_tile`` px are
    enlarged (nearest neighbour) so that the labels fit under them."""
    rows, columns = len(tiles), max(len(row) for row in tiles)
    size = max(tiles[0][0].shape[-1], min_tile)
    lines = max(1, *(label.count("\n") + 1 for row in labels for label in row))
    cell_h = size + 11 * lines + 4
    grid = Image.new("RGB", (columns * size, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for row, (row_tiles, row_labels) in enumerate(zip(tiles, labels)):
        for col, (tile, label) in enumerate(zip(row_tiles, row_labels)):
            image = tensor_to_image(tile)
            if image.width < size:
                image = image.resize((size, size), Image.Resampling.NEAREST)
            grid.paste(image, (col * size, row * cell_h))
            for line, text in enumerate(label.split("\n")):
                # Pillow's default font draws a space 2 px wide: "brightness 0.449" would read as one word.
                draw.text((col * size + 2, row * cell_h + size + 2 + 11 * line), text.replace(" ", "  "),
                          fill="black")
    return grid
