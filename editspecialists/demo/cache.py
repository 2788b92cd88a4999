"""The demo's build cache: folders built once, file-locked, and reused by every later run.

A folder holding a ``.complete`` marker for the current ``TINY_VERSION`` is reused as is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

TINY_VERSION = "2"
_MARKER = ".complete"


def default_cache_root() -> Path:
    """Folder for cached tiny models: ``$EDITSPECIALISTS_CACHE`` or ``~/.cache/editspecialists``."""
    root = os.environ.get("EDITSPECIALISTS_CACHE") or Path.home() / ".cache" / "editspecialists"
    return Path(root) / f"tiny-v{TINY_VERSION}"


def cached_build(folder: Path, build: Callable[[Path], None]) -> Path:
    """Return ``folder``, first running ``build(tmp)`` and renaming ``tmp`` to it if needed.

    A file lock serialises concurrent builders (test workers, launched processes): the first
    builds, the others wait and reuse its result. The rename means an interrupted build never
    leaves a half-written folder behind.
    """
    from filelock import FileLock

    folder = Path(folder)
    if (folder / _MARKER).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / _MARKER).exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
        try:
            build(tmp)
            (tmp / _MARKER).write_text(TINY_VERSION)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
