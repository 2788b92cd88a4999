"""The held-out inputs of a run: images it validates on and never trains on.

Either a folder of their own (``val.inputimg_dir``), or a share of the input folder
(``val.fraction``) chosen by file name: a file is held out when a hash of its name falls below
the fraction, so the choice of one file never depends on the others (adding files to the folder
never moves a held-out file into training) and about ``fraction`` of the files are held out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from editspecialists.data.images import list_images


@dataclass(frozen=True)
class HeldOut:
    """Where the held-out inputs are and which they are.

    folder: the folder holding them; files: their names there (sorted); excluded_from_training:
    the names training must leave out of its input folder (the split-off files; none for a folder
    of their own); source: the config key that chose them.
    """

    folder: Path
    files: list[str]
    source: str
    excluded_from_training: frozenset[str] = field(default_factory=frozenset)


def name_fraction(file_name: str) -> float:
    """A number in [0, 1) that depends on the file name only (SHA-256 of it), uniform over names."""
    return int.from_bytes(hashlib.sha256(file_name.encode()).digest()[:8], "big") / 2 ** 64


def split_by_name(file_names: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training names, held-out names) of ``file_names``: held out where
    :func:`name_fraction` < ``fraction``."""
    held = [name for name in file_names if name_fraction(name) < fraction]
    return [name for name in file_names if name not in set(held)], held


def folder_of_their_own(folder: str | Path, input_dir: str | Path, key: str, advice: str) -> HeldOut:
    """Every image of ``folder`` (chosen by config ``key``) as held-out inputs; an error naming the
    key when ``folder`` is the training folder ``input_dir`` (``advice``: what to give instead) or
    holds no image."""
    if Path(folder).expanduser().resolve() == Path(input_dir).expanduser().resolve():
        raise ValueError(f"--config.{key}: {folder} is the training folder (inputimg_dir); {advice}")
    files = [path.name for path in list_images(folder, f"held-out input image ({key})")]
    return HeldOut(Path(folder), files, key)


def held_out_inputs(input_dir: str | Path, val_dir: str | Path, fraction: float) -> tuple[HeldOut | None, str]:
    """The held-out inputs chosen by ``val.inputimg_dir`` / ``val.fraction``, and a one-line
    reason when there are none (``(None, reason)``).

    A folder of their own must hold images (and not be the input folder): asked for explicitly,
    its absence is an error. A share of the input folder that would hold out no image, or every
    image, gives no held-out set and says why.
    """
    if val_dir:
        return folder_of_their_own(val_dir, input_dir, "val.inputimg_dir",
                                   "give a folder of held-out images, or leave it empty and set val.fraction"), ""
    if fraction <= 0:
        return None, "no held-out inputs (val.fraction is 0 and val.inputimg_dir is empty)"
    names = [path.name for path in list_images(input_dir, "input image")]
    train, held = split_by_name(names, fraction)
    if not held or not train:
        return None, (f"no held-out inputs: val.fraction {fraction:g} of the {len(names)} inputs of {input_dir} "
                      f"holds out {len(held)}, leaving {len(train)} to train on; give a folder of held-out "
                      f"images with --config.val.inputimg_dir, or another val.fraction")
    return HeldOut(Path(input_dir), held, "val.fraction", frozenset(held)), ""
