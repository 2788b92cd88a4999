"""The one cache of everything the demo and the tests build: demo images, demo editor, stand-ins.

Folder: ``$EDITSPECIALISTS_CACHE``, default ``~/.cache/editspecialists``. The demo, the scripts
and the tests all use it, so each asset is built once per machine and reused by every later run.
Each asset is one sub-folder written by one builder function; its ``.complete`` marker records the
builder's version (see :data:`BUILDER_VERSIONS`). A folder whose marker does not match the code is
rebuilt; a file lock lets concurrent processes (test workers, launched ranks) build it once.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

CACHE_ENV = "EDITSPECIALISTS_CACHE"
_MARKER = ".complete"

# Version of what each builder writes, by the builder's function name (1 when not listed). Bump a
# builder's entry when its output changes: the folders it built are rebuilt on next use, and only
# those (and the assets built from it, see BUILT_FROM).
BUILDER_VERSIONS = {
    "write_demo_images": 1,
    "build_tiny_ip2p": 1,
    "build_demo_editor": 7,
    "build_detector": 2,
    "build_segmenter": 2,
    "build_depth": 3,
    "build_dreamsim": 3,
}
# Builders whose output is made from other builders' output: they rebuild when those change.
BUILT_FROM = {"build_demo_editor": ("build_tiny_ip2p", "write_demo_images")}

logger = logging.getLogger(__name__)
_builds_done = 0


def default_cache_root() -> Path:
    """The cache folder, absolute: ``$EDITSPECIALISTS_CACHE`` or ``~/.cache/editspecialists``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "editspecialists"
    return Path(root).expanduser().resolve()


def build_stamp(build: Callable) -> str:
    """The marker text of a folder built by ``build``: its version and those it is built from."""
    names = (build.__name__, *BUILT_FROM.get(build.__name__, ()))
    return " ".join(f"{name}={BUILDER_VERSIONS.get(name, 1)}" for name in names)


def is_current(folder: Path, build: Callable) -> bool:
    """Whether ``folder`` holds a complete build by the current version of ``build``."""
    marker = Path(folder) / _MARKER
    return marker.is_file() and marker.read_text() == build_stamp(build)


def first_sentence(text: str) -> str:
    """The first sentence of a docstring, on one line, as plain text: reST's double backquotes and
    roles (``:data:`~a.B``` becomes ``B``) dropped."""
    plain = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text.replace("``", ""))
    return " ".join(plain.split()).split(". ")[0].rstrip(".")


def builds_done() -> int:
    """How many builds :func:`cached_build` has run in this process (to tell whether a call built)."""
    return _builds_done


def cached_build(folder: Path, build: Callable[[Path], object]) -> Path:
    """Return ``folder``, first running ``build(tmp)`` and renaming ``tmp`` to it if it is not current.

    A file lock serialises concurrent builders: the first builds, the others wait and reuse its
    result. The rename means an interrupted build never leaves a half-written folder behind.
    Each build is logged (what, where, how long).
    """
    global _builds_done
    from filelock import FileLock

    folder = Path(folder)
    if is_current(folder, build):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_current(folder, build):
            return folder
        logger.info("building %s: %s", folder, first_sentence(build.__doc__ or build.__name__))
        start = time.perf_counter()
        for stale in [folder, *folder.parent.glob(folder.name + ".tmp*")]:  # also killed builds' leftovers
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
        try:
            build(tmp)
            (tmp / _MARKER).write_text(build_stamp(build))
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _builds_done += 1
        logger.info("built %s in %.1f s", folder.name, time.perf_counter() - start)
    return folder
