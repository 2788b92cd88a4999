"""Checkpoints: fine-tuned weights in safetensors plus the full training state.

Layout of a run folder::

    <run>/config.json                  resolved config (generate/resume rebuild the model from it)
    <run>/checkpoints/checkpoint_0005/ one folder per saved epoch
        weights.safetensors            trainable weights + architecture metadata
        trainer.json                   {"epoch": next epoch to run, "global_step": ...}
        state/                         accelerate state (optimizer, RNG, ...) for exact resume

Folders are written under a temporary name and renamed when complete, so an interrupted save
never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "weights.safetensors"
TRAINER_STATE = "trainer.json"
ACCELERATE_STATE = "state"
CHECKPOINTS = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")
# Settings that change the set or shape of the saved weights.
ARCHITECTURE_KEYS = ("use_lora", "lora_rank", "lora_alpha")


def architecture_of(config) -> dict[str, str]:
    """The architecture settings stored in (and checked against) a checkpoint's metadata."""
    return {key: str(config[key]) for key in ARCHITECTURE_KEYS}


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_{epoch:04d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CHECKPOINT_RE.match(p.name) and (p / WEIGHTS).is_file()]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the newest checkpoint of a run folder; clear error otherwise."""
    path = Path(path).expanduser()
    if (path / WEIGHTS).is_file():
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[-1]
    if not path.exists():
        raise FileNotFoundError(f"load_checkpoint={str(path)!r} does not exist")
    raise FileNotFoundError(
        f"load_checkpoint={str(path)!r} is neither a checkpoint (no {WEIGHTS}) nor a run folder "
        f"with complete checkpoints under {CHECKPOINTS}/"
    )


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], architecture: dict[str, str]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"format": "editspecialists-1", **architecture})


def load_weights(policy, checkpoint: str | Path, architecture: dict[str, str]) -> None:
    """Load a checkpoint's weights into ``policy``; any mismatch is an error that names it.

    Both the architecture metadata and the exact key set / shapes are checked, so loading can
    never silently do nothing.
    """
    path = Path(checkpoint) / WEIGHTS
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    differing = [f"{key}: checkpoint {metadata.get(key)!r} vs config {value!r}"
                 for key, value in architecture.items() if metadata.get(key) != value]
    if differing:
        raise ValueError(f"{path} was saved with another architecture ({'; '.join(differing)})")
    saved = load_file(str(path))
    expected = policy.trainable_state_dict()
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}")
    shapes = [f"{k}: {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if saved[k].shape != v.shape]
    if shapes:
        raise ValueError(f"{path} has tensors of other shapes: {shapes[:5]}")
    policy.load_state_dict(saved, strict=False)


def write_atomically(folder: Path, write) -> Path:
    """Call ``write(tmp_folder)``, then rename the temporary folder to ``folder``."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.rename(tmp, folder)
    return folder


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)


def read_trainer_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
