"""Pair every edit with its input image, a style image and the descriptive prompt.

Edits are the files ``edit_<input file name>`` written by ``scripts/generate.py``. With a
``manifest.jsonl`` beside them (one JSON object a line: ``input``, ``style``, ``prompt``, ``seed``,
``edit``, ``model``; file names relative to the input, style and edit folders), the manifest decides
the pairs and the style image used at generation: a listed edit that is missing and an edit file it
does not list are left out, with the reason. Without one, the input is found from the edit's
file name (the ``edit_`` prefix removed; file names may contain underscores, and the extension may
differ) and a style image is drawn with a seeded RNG.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from editspecialists.data.images import is_image_file, list_images
from editspecialists.data.manifest import EDIT_PREFIX, MANIFEST, read_manifest_lines



class PairingError(ValueError):
    """Edits, inputs and styles that cannot be paired; the message says which file and why."""


@dataclass(frozen=True)
class EvalItem:
    """One evaluated edit: the three image files and the descriptive prompt."""

    edit: Path
    input: Path
    style: Path
    prompt: str
    model: dict | None = None  # the manifest's record of the model that made the edit


@dataclass
class Pairing:
    """The edits to score and those left out.

    listed: how many edits the manifest lists (without one: the edit files found).
    left_out: ``{edit file name: reason}`` of listed edits that cannot be scored and of edit files
    the manifest does not list.
    """

    items: list[EvalItem]
    listed: int
    left_out: dict[str, str] = field(default_factory=dict)


def descriptive_prompt(input_name: str, style_name: str) -> str:
    return f"{input_name} made out of {style_name}"


def match_input(edit: Path, inputs: list[Path]) -> Path:
    """The input of ``edit_<name>``: the input file called ``<name>``, else the one with its stem."""
    wanted = edit.name[len(EDIT_PREFIX):]
    by_name = [p for p in inputs if p.name == wanted]
    if by_name:
        return by_name[0]
    by_stem = [p for p in inputs if p.stem == Path(wanted).stem]
    if len(by_stem) == 1:
        return by_stem[0]
    if by_stem:
        raise PairingError(f"edit {edit} matches several inputs: {', '.join(p.name for p in by_stem)}")
    folder = inputs[0].parent
    raise PairingError(f"edit {edit} has no matching input: expected {wanted} (any extension) in {folder}")


def _existing(folder: Path, name: str, what: str, line_no: int) -> Path:
    path = folder / name
    if not path.is_file():
        raise PairingError(f"{MANIFEST} line {line_no}: {what} {path} not found")
    return path


def pair_from_manifest(manifest: Path, input_dir: Path, style_dir: Path, styles: list[Path],
                       rng: random.Random, prompt: str) -> Pairing:
    """Items of the edits ``manifest`` lists; a later line for the same edit replaces an earlier
    one. Listed edits that are missing and edit files it does not list are left out."""
    edit_dir = manifest.parent
    by_edit: dict[str, EvalItem] = {}
    for entry in read_manifest_lines(manifest):
        line = entry["_line"]
        style = _existing(style_dir, entry["style"], "style", line) if entry.get("style") else rng.choice(styles)
        by_edit[entry["edit"]] = EvalItem(edit=edit_dir / entry["edit"],
                                          input=_existing(input_dir, entry["input"], "input", line),
                                          style=style, prompt=prompt, model=entry.get("model"))
    missing = {name for name, item in by_edit.items() if not item.edit.is_file()}
    unlisted = {p.name for p in edit_dir.glob(EDIT_PREFIX + "*") if is_image_file(p)} - set(by_edit)
    left_out = {**{name: f"listed in {MANIFEST} but missing" for name in missing},
                **{name: f"not listed in {MANIFEST}" for name in unlisted}}
    items = [by_edit[name] for name in sorted(by_edit) if name not in missing]
    return Pairing(items, listed=len(by_edit), left_out=dict(sorted(left_out.items())))


def pair_by_file_name(edit_dir: Path, inputs: list[Path], styles: list[Path],
                      rng: random.Random, prompt: str) -> Pairing:
    """Items for the ``edit_*`` files of ``edit_dir`` without a manifest: inputs matched by name,
    styles drawn with ``rng``."""
    edits = [p for p in list_images(edit_dir, "edits") if p.name.startswith(EDIT_PREFIX)]
    if not edits:
        raise PairingError(f"edits folder {edit_dir} holds no '{EDIT_PREFIX}<input file name>' image")
    return Pairing([EvalItem(edit, match_input(edit, inputs), rng.choice(styles), prompt) for edit in edits],
                   listed=len(edits))


def pair_edits(edit_dir: str | Path, input_dir: str | Path, style_dir: str | Path,
               input_name: str, style_name: str, seed: int) -> Pairing:
    """Every edit of ``edit_dir`` with its input, style image and prompt, sorted by edit name."""
    edit_dir, input_dir, style_dir = Path(edit_dir), Path(input_dir), Path(style_dir)
    inputs = list_images(input_dir, "input", key="inputimg_dir")
    styles = list_images(style_dir, "style", key="styleimg_dir")
    list_images(edit_dir, "edits", key="sample_savedir")
    rng = random.Random(seed)
    prompt = descriptive_prompt(input_name, style_name)
    manifest = edit_dir / MANIFEST
    if manifest.is_file():
        return pair_from_manifest(manifest, input_dir, style_dir, styles, rng, prompt)
    return pair_by_file_name(edit_dir, inputs, styles, rng, prompt)
