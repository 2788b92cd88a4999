"""Evaluation outputs: the summary JSON, the per-image CSV and a side-by-side PNG report, written
together (:func:`write_evaluation`).

An evaluation's files share a stem: ``<name>`` for the first, ``<name>.2``, ``<name>.3``... for
evaluations with other settings. The JSON is renamed into place last and lists the set's files:
an evaluation is complete when its JSON exists. A rerun with the same settings replaces its files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from editspecialists import writing
from editspecialists.evaluation.pairs import EvalItem

SUMMARY = ".json"  # the suffix of the file written last, which marks an evaluation complete


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


def stems_in(out_dir: Path, name: str, suffixes: Sequence[str]) -> dict[str, set[str]]:
    """``{stem: suffixes present}`` of the evaluation files named ``<name>[.<n>]<suffix>`` in ``out_dir``."""
    pattern = re.compile(rf"^({re.escape(name)}(?:\.\d+)?)({'|'.join(map(re.escape, suffixes))})$")
    found: dict[str, set[str]] = {}
    for match in filter(None, (pattern.match(p.name) for p in out_dir.iterdir())):
        found.setdefault(match.group(1), set()).add(match.group(2))
    return found


def recorded_settings(path: Path):
    """The ``settings`` of an evaluation's JSON; None if it has none or cannot be read."""
    try:
        return json.loads(path.read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None


def evaluation_stem(out_dir: Path, name: str, settings, suffixes: Sequence[str]) -> str:
    """The stem of an evaluation's files in ``out_dir``: that of the complete evaluation with the
    same ``settings`` (replaced), else that of an incomplete one (files without their JSON:
    replaced), else the next number (``name``, ``name.2``, ...), so that no complete evaluation
    of other settings is replaced and no second copy of one is written beside it."""
    stems = stems_in(out_dir, name, [SUMMARY, *suffixes])
    for stem in sorted(stems):
        if SUMMARY in stems[stem] and recorded_settings(out_dir / f"{stem}{SUMMARY}") == settings:
            return stem
    incomplete = sorted(stem for stem, present in stems.items() if SUMMARY not in present)
    if incomplete:
        return incomplete[0]
    numbers = [int(stem[len(name) + 1:]) if stem != name else 1 for stem in stems]
    return name if not numbers else f"{name}.{max(numbers) + 1}"


def write_evaluation(out_dir: Path, name: str, payload: dict, files: dict[str, bytes], advice: str) -> Path:
    """Write one evaluation, all of it or nothing: the JSON ``payload`` (which holds its
    ``settings``; a ``files`` list of the set is added) and ``files`` (``{suffix: content}``, e.g.
    ``"_per_image.csv"``), as ``<stem><suffix>`` (:func:`evaluation_stem`). Returns the JSON's path.

    Every file is written under a temporary name first, then renamed, the JSON last; the replaced
    evaluation's JSON is removed before the first rename, so an interruption never leaves a set
    that looks complete and is not. A failed write (a full disk) removes the temporary files,
    leaves earlier evaluations as they were and raises :func:`writing.write_failure` ending with
    ``advice``; less free space than the files take is refused before writing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    leftovers = stems_in(out_dir, name, [suffix + writing.TEMPORARY for suffix in [SUMMARY, *files]])
    for stem, suffixes in leftovers.items():  # of an evaluation that was killed
        for suffix in suffixes:
            (out_dir / f"{stem}{suffix}").unlink()
    settings = json.loads(json.dumps(payload["settings"]))
    stem = evaluation_stem(out_dir, name, settings, list(files))
    targets = {suffix: out_dir / f"{stem}{suffix}" for suffix in [*files, SUMMARY]}
    summary = {**payload, "settings": settings, "files": sorted(path.name for path in targets.values())}
    contents = {**files, SUMMARY: (json.dumps(summary, indent=2) + "\n").encode()}
    needed = sum(len(data) for data in contents.values())
    writing.check_free_space(out_dir, "evaluation to", needed, advice)
    temporary = {suffix: path.with_name(path.name + writing.TEMPORARY) for suffix, path in targets.items()}
    try:
        for suffix, data in contents.items():
            temporary[suffix].write_bytes(data)
    except writing.WRITE_ERRORS as error:
        for path in temporary.values():
            path.unlink(missing_ok=True)
        raise writing.write_failure(out_dir, "evaluation to", writing.failure_reason(error), needed,
                                    advice) from error
    targets[SUMMARY].unlink(missing_ok=True)
    for suffix in [*files, SUMMARY]:
        os.replace(temporary[suffix], targets[suffix])
    return targets[SUMMARY]


def csv_bytes(items: Sequence[EvalItem], per_image: dict[str, list[float]]) -> bytes:
    """The per-image CSV: one row per edit: file names, prompt, then every metric value."""
    names = list(per_image)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["edit", "input", "style", "prompt", *names])
    for row, item in enumerate(items):
        values = [per_image[name][row] for name in names]
        writer.writerow([item.edit.name, item.input.name, item.style.name, item.prompt, *values])
    return text.getvalue().encode()


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    """Fit into a ``size`` square keeping the aspect ratio (white bars)."""
    return ImageOps.pad(image, (size, size), Image.Resampling.BICUBIC, color="white")


def report_png_bytes(items: Sequence[EvalItem], images: dict[Path, Image.Image],
                     per_image: dict[str, list[float]], thumb: int = 128, max_rows: int = 16) -> bytes:
    """The report image, PNG: rows ``input | style | edit | scores`` for the first ``max_rows`` edits."""
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
    encoded = io.BytesIO()
    sheet.save(encoded, format="PNG")
    return encoded.getvalue()
