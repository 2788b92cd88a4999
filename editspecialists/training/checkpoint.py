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
    """The checkpoint folder of ``path``: a checkpoint folder, its weights file, or a run folder
    (its newest complete checkpoint); a clear error otherwise."""
    path = Path(path).expanduser()
    if path.name == WEIGHTS and path.is_file():
        return path.parent
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


def saved_run_config(checkpoint: Path):
    """The resolved config of the run that wrote ``checkpoint`` (``<run>/config.json``)."""
    import ml_collections

    path = Path(checkpoint).parent.parent / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: cannot tell how {checkpoint} was trained")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


# Settings a resumed run must share with the run that wrote its checkpoint.
MODEL_KEYS = ("pretrained.model", "pretrained.revision") + ARCHITECTURE_KEYS


def check_same_model(config, saved, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` on another base model or architecture than it was trained on."""
    def value(cfg, key):
        for part in key.split("."):
            cfg = cfg[part]
        return cfg

    differing = [f"{key}: run {value(saved, key)!r} vs now {value(config, key)!r}"
                 for key in MODEL_KEYS if value(saved, key) != value(config, key)]
    if differing:
        raise ValueError(f"cannot resume {checkpoint} with another model ({'; '.join(differing)}); "
                         f"set these keys as in the run's config.json")


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], architecture: dict[str, str]) -> None:
    """Write the trainable weights to ``path`` (safetensors) with the architecture as metadata."""
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


def temporary_path(folder: Path) -> Path:
    """``<folder>.tmp``: where ``folder`` is written before :func:`commit_folder` renames it."""
    return folder.with_name(folder.name + ".tmp")


def temporary_folder(folder: Path) -> Path:
    """An empty :func:`temporary_path` of ``folder`` (a leftover of an interrupted save is removed)."""
    tmp = temporary_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_folder(tmp: Path, folder: Path) -> Path:
    """Rename the complete ``tmp`` to ``folder``.

    An existing ``folder`` is moved aside first and deleted only once the new one is in place,
    so an interruption at any point leaves a complete checkpoint under ``folder`` or its ``.old``.
    """
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)


def read_trainer_state(checkpoint: Path) -> dict:
    """``{"epoch": next epoch to run, "global_step": optimizer steps so far}`` of a checkpoint."""
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
