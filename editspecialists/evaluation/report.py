"""Evaluation outputs: the summary JSON, the per-image CSV and a side-by-side PNG report."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from editspecialists.evaluation.pairs import EvalItem


def summarise(per_image: dict[str, list[float]]) -> dict[str, dict]:
    """Per metric: mean and (population) std over the images with a finite value, and their count."""
    summary = {}
    for name, values in per_image.items():
        finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "count": int(finite.size),
        }
    return summary


def output_stem(out_dir: Path, name: str) -> str:
    """The stem of a new evaluation's files in ``out_dir``: ``name`` for the first, then
    ``name.2``, ``name.3``, ... (one more than the highest there), so none replaces an earlier one."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\.(\d+))?\.json$")
    numbers = [int(match.group(1) or 1) for match in map(pattern.match, (p.name for p in out_dir.iterdir())) if match]
    return name if not numbers else f"{name}.{max(numbers) + 1}"


def write_json(path: Path, summary: dict, skipped: dict[str, str], header: dict) -> None:
    """``{**header, "metrics": {name: {mean, std, count}}, "skipped": {name: reason}}``."""
    payload = {**header, "metrics": summary, "skipped": skipped}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def write_csv(path: Path, items: Sequence[EvalItem], per_image: dict[str, list[float]]) -> None:
    """One row per edit: file names, prompt, then every metric value."""
    names = list(per_image)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["edit", "input", "style", "prompt", *names])
        for row, item in enumerate(items):
            values = [per_image[name][row] for name in names]
            writer.writerow([item.edit.name, item.input.name, item.style.name, item.prompt, *values])


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    """Fit into a ``size`` square keeping the aspect ratio (white bars)."""
    return ImageOps.pad(image, (size, size), Image.Resampling.BICUBIC, color="white")


def write_report_png(path: Path, items: Sequence[EvalItem], images: dict[Path, Image.Image],
                     per_image: dict[str, list[float]], thumb: int = 128, max_rows: int = 16) -> None:
    """Rows ``input | style | edit | scores`` for the first ``max_rows`` edits."""
    rows = list(items)[:max_rows]
    text_width, line_height, header = 260, 12, 16
    row_height = max(thumb, line_height * (len(per_image) + 1) + 8)
    sheet = Image.new("RGB", (3 * thumb + text_width, header + row_height * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(("input", "style", "edit", "scores")):
        draw.text((column * thumb + 4, 2), title, fill="black")
    for row, item in enumerate(rows):
        top = header + row * row_height
        for column, file in enumerate((item.input, item.style, item.edit)):
            sheet.paste(_thumbnail(images[file], thumb), (column * thumb, top))
        lines = [item.edit.name] + [f"{name}: {values[row]:.4g}" for name, values in per_image.items()]
        draw.multiline_text((3 * thumb + 6, top + 4), "\n".join(lines), fill="black", spacing=2)
    sheet.save(path)
