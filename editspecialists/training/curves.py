"""Held-out curves of a run: per score, the paired difference from the base model after each
validation, with ±2 standard errors, drawn from ``validation.jsonl`` (scripts/plot_validation.py);
or, given a control run (``reward.ranking = "random"``, same seed and held-out set), the paired
difference from the control's edits after the same number of epochs: what the feedback added to
the drift of the updates.

Drawn with PIL (no plotting dependency): one panel per score, the x axis the epochs trained, the
y axis the specialist's mean minus the base's over the same held-out edits, a dashed line at 0,
and the side that is better marked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from editspecialists.paired import PairedDifference, paired_difference, verdict
from editspecialists.training.validation import edit_key

PANEL = (360, 220)  # width, height of one score's panel, pixels
MARGIN = (58, 24, 14, 34)  # left, top, right, bottom, pixels
Curves = dict[str, list[tuple[int, PairedDifference]]]  # score -> [(after_epochs, paired difference)]


def paired_points(rows: list[dict], scores: list[str], reference: Callable[[dict], dict | None]) -> Curves:
    """Per score and validation of ``rows``, the paired difference of each row from
    ``reference(row)`` (rows without one are left out)."""
    curves = {}
    for name in scores:
        points = []
        for after in sorted({row["after_epochs"] for row in rows}):
            pairs = [(row, reference(row)) for row in rows if row["after_epochs"] == after]
            pairs = [(row, other) for row, other in pairs if other is not None]
            difference = paired_difference([row[name] for row, _ in pairs], [other[name] for _, other in pairs])
            points.append((after, difference))
        curves[name] = points
    return curves


def paired_curves(rows: list[dict], scores: list[str]) -> Curves:
    """Per score, ``[(after_epochs, paired difference from the base)]`` over the validations of
    ``rows`` (validation.jsonl rows; the base's are those with ``after_epochs`` 0)."""
    base = {edit_key(row): row for row in rows if row["after_epochs"] == 0}
    return paired_points(rows, scores, lambda row: base.get(edit_key(row)))


def curves_against_control(rows: list[dict], control_rows: list[dict], scores: list[str]) -> Curves:
    """Per score, ``[(after_epochs, paired difference run - control)]`` over the validations both
    runs made, each edit paired with the control's of the same input and seed.

    Raises ValueError if the runs share no edit, or if their base validations (``after_epochs`` 0)
    differ: a control must edit the same held-out inputs with the same seeds and base model.
    """
    control = {(row["after_epochs"], *edit_key(row)): row for row in control_rows}

    def twin(row: dict) -> dict | None:
        return control.get((row["after_epochs"], *edit_key(row)))

    shared = [row for row in rows if twin(row)]
    if not shared:
        raise ValueError("the run and the control share no held-out edit (input and seed): a control run "
                         "needs the run's seed and held-out set")
    for row in shared:
        for name in scores if row["after_epochs"] == 0 else ():
            if not math.isclose(row[name], twin(row)[name], rel_tol=1e-4, abs_tol=1e-6):
                raise ValueError(f"the base validations differ ({name} of {row['input']}, seed {row['seed']}: "
                                 f"{row[name]} against {twin(row)[name]}): the control must start from the same "
                                 "base model, seed and sampling settings")
    return paired_points(shared, scores, twin)


def draw_curves(curves: Curves, lower_is_better: dict[str, bool],
                title: str = "", against: str = "base") -> Image.Image:
    """One panel per score: difference from ``against`` (y) per epochs trained (x), ±2 SE bars."""
    width, height = PANEL
    header = 18 if title else 0
    image = Image.new("RGB", (width * len(curves), height + header), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((6, 3), title, fill="black")
    for panel, (name, points) in enumerate(curves.items()):
        draw_panel(draw, (panel * width, header), name, points, lower_is_better[name], against)
    return image


def draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], name: str,
               points: list[tuple[int, PairedDifference]], lower_is_better: bool, against: str = "base") -> None:
    left, top, right, bottom = MARGIN
    x0, y0 = origin[0] + left, origin[1] + top
    x1, y1 = origin[0] + PANEL[0] - right, origin[1] + PANEL[1] - bottom
    epochs = [p[0] for p in points]
    low = min([0.0] + [d.mean - 2 * d.se for _, d in points])
    high = max([0.0] + [d.mean + 2 * d.se for _, d in points])
    span = (high - low) or 1.0
    low, high = low - 0.05 * span, high + 0.05 * span

    def x_of(epoch):
        return x0 + (x1 - x0) * (epoch - epochs[0]) / max(1, epochs[-1] - epochs[0])

    def y_of(value):
        return y1 - (y1 - y0) * (value - low) / (high - low)

    draw.rectangle([x0, y0, x1, y1], outline="black")
    for x in range(int(x0), int(x1), 8):
        draw.line([x, y_of(0), x + 4, y_of(0)], fill="grey")
    better = "better: below 0" if lower_is_better else "better: above 0"
    draw.text((x0, origin[1] + 6), f"{name} - {against} ({better})", fill="black")
    for value in (low, high):
        draw.text((origin[0] + 2, y_of(value) - 6), f"{value:+.3f}", fill="black")
    draw.text((x0, y1 + 4), f"{epochs[0]}", fill="black")
    draw.text((x1 - 14, y1 + 4), f"{epochs[-1]}", fill="black")
    draw.text(((x0 + x1) / 2 - 40, y1 + 18), "epochs trained", fill="black")
    line = [(x_of(epoch), y_of(d.mean)) for epoch, d in points]
    if len(line) > 1:
        draw.line(line, fill=(30, 90, 200), width=2)
    for epoch, difference in points:
        mean, se = difference.mean, difference.se
        x = x_of(epoch)
        draw.line([x, y_of(mean - 2 * se), x, y_of(mean + 2 * se)], fill=(30, 90, 200))
        draw.ellipse([x - 2, y_of(mean) - 2, x + 2, y_of(mean) + 2], fill=(30, 90, 200))


def validation_rows(run_dir: Path) -> list[dict]:
    """The rows of ``<run_dir>/validation.jsonl``; ValueError naming the file if it holds none."""
    from editspecialists.training.validation import VALIDATION_FILE, read_rows

    rows = read_rows(Path(run_dir) / VALIDATION_FILE)
    if not rows:
        raise ValueError(f"{Path(run_dir) / VALIDATION_FILE} holds no validation row")
    return rows


def score_names(rows: list[dict]) -> list[str]:
    """The scores of validation rows, in the rows' order."""
    fixed = {"after_epochs", "input", "seed", "style", "prompt"}
    return [key for key in rows[0] if key not in fixed]


def plot_validation(run_dir: str | Path, scores: list[str] | None = None,
                    control_dir: str | Path | None = None) -> tuple[Path, Curves]:
    """Draw the run's held-out curves from its validation.jsonl; returns (the image's path, the curves).

    Without ``control_dir``: against the base model, ``<run>/validation/curves.png``. With it:
    against the control run's edits (:func:`curves_against_control`),
    ``<run>/validation/curves_vs_<control folder name>.png``. ``scores``: which to draw (default:
    every score of the rows, in the rows' order).
    """
    from editspecialists.rewards import SCORES
    from editspecialists.training.validation import VALIDATION_DIR

    run_dir = Path(run_dir)
    rows = validation_rows(run_dir)
    scores = scores or score_names(rows)
    directions = {name: SCORES[name].lower_is_better for name in scores}
    edits = len([row for row in rows if row["after_epochs"] == 0])
    if control_dir is None:
        curves, against, name = paired_curves(rows, scores), "base", "curves.png"
        title = f"{run_dir.name}: held-out edits ({edits}) vs the base model, mean difference ± 2 SE"
    else:
        control_dir = Path(control_dir)
        curves = curves_against_control(rows, validation_rows(control_dir), scores)
        against, name = "control", f"curves_vs_{control_dir.name}.png"
        title = f"{run_dir.name}: held-out edits ({edits}) vs the control {control_dir.name}, mean difference ± 2 SE"
    path = run_dir / VALIDATION_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_curves(curves, directions, title=title, against=against).save(path)
    return path, curves


def difference_lines(curves: Curves, against: str) -> list[str]:
    """One line per score: its last point's difference ± standard error and verdict
    (:func:`~editspecialists.paired.verdict`), e.g. ``semantic after 30 epochs: -0.0662 ± 0.0192
    against the control (better)``."""
    from editspecialists.rewards import SCORES

    lines = []
    for name, points in curves.items():
        after, difference = points[-1]
        judged = verdict(difference, SCORES[name].lower_is_better)
        lines.append(f"{name} after {after} epochs: {difference.mean:+.4f} ± {difference.se:.4f} against {against} "
                     f"({judged})")
    return lines
