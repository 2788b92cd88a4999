"""The edits folder's ``manifest.jsonl``: what generate.py made, read by the evaluation.

One JSON object a line: ``input``, ``style`` (file names in the input and style folders),
``template``, ``prompt``, ``seed``, ``edit`` (the edit file beside the manifest: ``edit_<input file
name>``, or ``edit_<input stem>.png`` with ``sample.edit_format`` "png")
and ``model`` (``base``, ``revision``, ``checkpoint``, ``weights_sha256``: which model made it).
The manifest is the done-marker of generation: it is rewritten whole (aside, then renamed) after
each batch, and lists an edit only once its file is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

MANIFEST = "manifest.jsonl"
EDIT_PREFIX = "edit_"
# sample.edit_format: "input" (the original's: edit_<input file name>, in the input's format) or
# "png" (edit_<input stem>.png, lossless).
EDIT_FORMATS = ("input", "png")
TEMPORARY_SUFFIX = ".tmp"


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message names the file and the line."""


def read_manifest_lines(path: Path) -> list[dict]:
    """Parsed lines of a manifest with their line numbers under ``"_line"``, in file order."""
    entries = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path} line {line_no} is not valid JSON: {err}") from err
        if "input" not in entry or "edit" not in entry:
            raise ManifestError(f"{path} line {line_no} lacks an 'input' or 'edit' file name")
        entries.append({**entry, "_line": line_no})
    return entries


def read_manifest(folder: Path) -> dict[str, dict]:
    """``{edit file name: entry}`` of ``folder``'s manifest (empty without one); a later line for the
    same edit replaces an earlier one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    entries = ({key: value for key, value in line.items() if key != "_line"} for line in read_manifest_lines(path))
    return {entry["edit"]: entry for entry in entries}


def write_then_rename(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it to ``path``: an interruption
    never leaves a partial ``path``."""
    tmp = path.with_name(path.name + TEMPORARY_SUFFIX)
    write(tmp)
    os.replace(tmp, path)


def write_manifest(folder: Path, manifest: dict[str, dict]) -> None:
    """Replace ``folder``'s manifest by the entries of ``manifest`` (written aside, then renamed)."""
    text = "".join(json.dumps(entry) + "\n" for entry in manifest.values())
    write_then_rename(Path(folder) / MANIFEST, lambda tmp: tmp.write_text(text))
