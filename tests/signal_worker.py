"""Runs a script of ``scripts/`` as ``python <script> <arguments>`` does, after arranging for this
process to send itself real signals at chosen points of its work.

Usage: signal_worker.py <SIGNAL>@<point>[,<SIGNAL>@<point>...] <script> <arguments...>

Points (the signal is sent once, when the point is first reached):
- ``step:N``        the trainer logged optimizer step N (right after that step);
- ``step:N:rank:R`` the same, on the process of rank R only (a launch of several processes);
- ``sampled:E``     the trainer has sampled and scored epoch E;
- ``saving:NAME``   checkpoint NAME (e.g. ``checkpoint_0002``) is written, not yet hashed nor renamed;
- ``serialize:N``   safetensors is about to write its N-th file;
- ``edit:N``        generate.py has written its N-th edit file;
- ``scored:N``      evaluate.py has made its N-th batch of edits to score;
- ``renamed:NAME``  a file has just been renamed (``os.replace``) to a file named NAME.

A signal whose point comes after another's waits ``REPEAT_WINDOW_S`` first, so that it counts as
a second signal. The printed resume command (``python <script> ...``) works without this worker.
"""

import os
import runpy
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editspecialists.stopping import REPEAT_WINDOW_S  # noqa: E402

SENT = []


def send(signum: int) -> None:
    if SENT:
        time.sleep(REPEAT_WINDOW_S + 0.5)
    SENT.append(signum)
    os.kill(os.getpid(), signum)


def arm(signum: int, point: str) -> None:
    """Patch the function that reaches ``point`` so that it sends ``signum`` there."""
    kind, _, value = point.partition(":")
    if kind == "step":
        from editspecialists.training.tracking import RunLogger

        number, _, rank = value.partition(":rank:")
        patch_after(RunLogger, "log", lambda self, record: record.get("step") == int(number)
                    and (not rank or os.environ.get("RANK", "0") == rank), signum)
    elif kind == "sampled":
        from editspecialists.training.trainer import Trainer

        patch_after(Trainer, "sample_epoch", lambda self, epoch: epoch == int(value), signum)
    elif kind == "saving":
        from editspecialists.formats import checkpoint

        patch_before(checkpoint, "record_hashes", lambda folder: folder.name == value + ".tmp", signum)
    elif kind == "serialize":
        import safetensors.torch

        counter = iter(range(1, 10**6))
        patch_before(safetensors.torch, "serialize_file", lambda *args, **kwargs: next(counter) == int(value), signum)
    elif kind == "renamed":
        patch_after(os, "replace", lambda source, target, **kwargs: Path(target).name == value, signum)
    elif kind == "edit":
        from PIL import Image

        counter = iter(range(1, 10**6))
        patch_after(Image.Image, "save", lambda *args, **kwargs: next(counter) == int(value), signum)
    elif kind == "scored":
        from editspecialists.evaluation import evaluator

        counter = iter(range(1, 10**6))
        patch_after(evaluator, "make_batch", lambda *args, **kwargs: next(counter) == int(value), signum)
    else:
        raise SystemExit(f"unknown point {point!r}")


def patch_after(owner, name: str, when, signum: int) -> None:
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            send(signum)
        return result

    setattr(owner, name, patched)


def patch_before(owner, name: str, when, signum: int) -> None:
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        if when(*args, **kwargs):
            send(signum)
        return original(*args, **kwargs)

    setattr(owner, name, patched)


def main():
    plan, script, *arguments = sys.argv[1:]
    for item in plan.split(","):
        name, point = item.split("@", 1)
        arm(getattr(signal, name), point)
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
