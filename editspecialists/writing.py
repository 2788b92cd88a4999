"""Writing so that a failure loses nothing: folders written aside and renamed into place, and one
message for a write that failed (most often a full disk).

Checkpoints, exports, generated edits and evaluation outputs all report a failed write through
:func:`write_failure`: what could not be written, why, the space it needs, the space free, and
what to do next; the caller removes its temporary files first, so earlier results stay as they were.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError

# What the libraries we write with raise when a write fails: OSError (Python, PIL, json), the
# RuntimeError of torch's writer, the SafetensorError of safetensors.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
TEMPORARY = ".tmp"
ASIDE = ".old"


class WriteFailedError(OSError):
    """A write that failed; the message names the target, the space needed and the space free.
    ``reason`` is the cause alone (one line)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return self.args[0]


def failure_reason(error: BaseException) -> str:
    """One line saying why a write failed: "no space left on its disk" for a full disk, whichever
    library reported it (errno ENOSPC, safetensors' "os error 28", torch's writer stopping short,
    which is how torch reports it); else the error's type and first line."""
    if isinstance(error, WriteFailedError):
        return error.reason
    text = str(error).strip()
    if getattr(error, "errno", None) == errno.ENOSPC or "os error 28" in text or "No space left" in text:
        return "no space left on its disk"
    if isinstance(error, RuntimeError) and "inline_container" in text:
        return "torch's writer stopped part-way, as it does when the disk is full"
    return f"{error.__class__.__name__}: {text.splitlines()[0] if text else ''}"


def free_bytes(path: Path) -> int:
    """Bytes free on the disk of ``path`` (of its nearest existing parent)."""
    existing = next(p for p in [Path(path), *Path(path).parents] if p.exists())
    return shutil.disk_usage(existing).free


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def write_failure(target: Path, what: str, reason: str, needed: int | None, advice: str) -> WriteFailedError:
    """The error of a failed write of ``what`` (e.g. "checkpoint") to ``target``: ``reason``, the bytes
    it needs (``needed``; None when unknown), the bytes free on that disk, then ``advice``."""
    size = f"It needs about {megabytes(needed)}; " if needed else ""
    message = (f"could not write {what} {target}: {reason}. {size}{megabytes(free_bytes(target))} free on "
               f"its disk. {advice}").rstrip()
    return WriteFailedError(message, reason)


def check_free_space(target: Path, what: str, needed: int | None, advice: str) -> None:
    """Refuse to start writing ``target`` when its disk has less than ``needed`` bytes free."""
    if needed and free_bytes(target) < needed:
        raise write_failure(target, what, "not enough free space to start writing it", needed, advice)


def temporary_path(folder: Path) -> Path:
    """``<folder>.tmp``: where ``folder`` is written before :func:`commit_folder` renames it."""
    return folder.with_name(folder.name + TEMPORARY)


def temporary_folder(folder: Path) -> Path:
    """An empty :func:`temporary_path` of ``folder`` (a leftover of an interrupted write is removed)."""
    tmp = temporary_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_folder(tmp: Path, folder: Path) -> Path:
    """Rename the complete ``tmp`` to ``folder``.

    An existing ``folder`` is moved aside (``<folder>.old``) first and deleted only once the new one
    is in place, so an interruption at any point leaves a complete folder under ``folder`` or its
    ``.old``.
    """
    old = folder.with_name(folder.name + ASIDE)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def write_folder(folder: Path, write, what: str, needed: int | None, advice: str) -> Path:
    """Write ``folder`` whole or not at all: ``write(tmp)`` fills :func:`temporary_folder`, which is
    then renamed into place (:func:`commit_folder`). A failure of any library's write removes the
    temporary folder and raises :func:`write_failure`; an existing ``folder`` is left as it was.
    ``needed``: the bytes it takes, checked against the free space before writing."""
    check_free_space(folder, what, needed, advice)
    tmp = temporary_folder(folder)
    try:
        write(tmp)
    except WRITE_ERRORS as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(folder, what, failure_reason(error), needed, advice) from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_folder(tmp, folder)
