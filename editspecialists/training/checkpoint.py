"""Checkpoints: fine-tuned weights in safetensors plus the full training state.

Layout of a run folder::

    <run>/config.json                  resolved config (generate/resume rebuild the model from it)
    <run>/config_resume_0005.json      the config of a resume at epoch 5 (see training/run_folder.py)
    <run>/checkpoints/checkpoint_0005/ one folder per saved epoch
        weights.safetensors            trainable weights + architecture metadata
        trainer.json                   {"epoch": next epoch to run, "global_step": ...}
        state/                         accelerate state (optimizer, RNG, ...) for exact resume
        hashes.json                    size and SHA-256 of every file above, written last

Folders are written under a temporary name and renamed when complete, so an interrupted save
never leaves a checkpoint that looks valid. ``hashes.json`` is checked whenever a checkpoint is
used (:func:`verify_checkpoint`): a file changed on disk after the save is an error naming it,
and a run folder resolves to its newest checkpoint that verifies. Checkpoints written before
hashes existed have no ``hashes.json``; their weights are still checked for readable, finite
values when loaded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from editspecialists.config_keys import flat_items, value_at

logger = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
TRAINER_STATE = "trainer.json"
ACCELERATE_STATE = "state"
HASHES = "hashes.json"
RUN_CONFIG = "config.json"  # the run's resolved config, in the run folder
CHECKPOINTS = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")
# Settings that change the set or shape of the saved weights.
ARCHITECTURE_KEYS = ("use_lora", "lora_rank", "lora_alpha")


def architecture_of(config) -> dict[str, str]:
    """The architecture settings stored in (and checked against) a checkpoint's metadata."""
    return {key: str(config[key]) for key in ARCHITECTURE_KEYS}


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_{epoch:04d}"


def run_folder_of(checkpoint: str | Path) -> Path:
    """The run folder that holds ``checkpoint`` (``<run>/checkpoints/checkpoint_N``)."""
    return Path(checkpoint).parent.parent


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CHECKPOINT_RE.match(p.name) and (p / WEIGHTS).is_file()]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, changed or corrupt file); the message names it."""


def resolve_checkpoint(path: str | Path, *, with_state: bool = False) -> Path:
    """The checkpoint folder of ``path``, verified (:func:`verify_checkpoint`).

    ``path`` is a checkpoint folder, its weights file, or a run folder: then its newest checkpoint
    that verifies, with a warning naming each newer one skipped and why. ``with_state`` also
    verifies the training state (resuming needs it; editing needs the weights only).
    """
    path = Path(path).expanduser()
    if path.name == WEIGHTS and path.is_file():
        path = path.parent
    if (path / WEIGHTS).is_file():
        verify_checkpoint(path, with_state=with_state)
        return path
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        if not path.exists():
            raise FileNotFoundError(f"load_checkpoint={str(path)!r} does not exist")
        raise FileNotFoundError(
            f"load_checkpoint={str(path)!r} is neither a checkpoint (no {WEIGHTS}) nor a run folder "
            f"with complete checkpoints under {CHECKPOINTS}/"
        )
    failures = []
    for checkpoint in reversed(checkpoints):
        try:
            verify_checkpoint(checkpoint, with_state=with_state)
        except CheckpointError as error:
            logger.warning("skipping %s: %s", checkpoint.name, error)
            failures.append(str(error))
            continue
        return checkpoint
    raise CheckpointError(f"no checkpoint of {path} verifies: {'; '.join(failures)}")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 16 MiB blocks); remembered for the process while
    the file's size and modification time stay the same, so that resolving, loading and
    recording provenance read a large weights file once."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


_HASHED: dict[tuple[str, int, int], str] = {}


def record_hashes(folder: Path) -> None:
    """Write ``folder/hashes.json``: ``{relative path: {"bytes", "sha256"}}`` of every file in it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != HASHES)
    record = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
              for p in files}
    (folder / HASHES).write_text(json.dumps({"algorithm": "sha256", "files": record}, indent=1))


def recorded_hashes(checkpoint: Path) -> dict[str, dict] | None:
    """The ``files`` record of a checkpoint's hashes.json; None for a checkpoint saved before hashes."""
    path = Path(checkpoint) / HASHES
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is unreadable ({error.__class__.__name__}: {error})") from error


def verify_checkpoint(checkpoint: str | Path, *, with_state: bool = False) -> None:
    """Check the files of a checkpoint against its hashes.json: the weights and trainer.json, and
    with ``with_state`` every file of the training state. Raises :class:`CheckpointError` naming
    the first file that is missing or whose size or SHA-256 differs from the recorded one."""
    checkpoint = Path(checkpoint)
    record = recorded_hashes(checkpoint)
    if record is None:
        logger.info("%s predates checkpoint hashes: its files are not verified", checkpoint)
        return
    for name in (WEIGHTS, TRAINER_STATE):
        if name not in record:
            raise CheckpointError(f"{checkpoint / HASHES} does not list {name}")
    verify_files(checkpoint, record, record if with_state else [WEIGHTS, TRAINER_STATE])


def verify_files(folder: Path, record: dict[str, dict], names) -> None:
    """Check the files ``names`` of ``folder`` against ``record`` (a hashes.json ``files`` record):
    a :class:`CheckpointError` names the first file missing or whose size or SHA-256 differs."""
    for name in names:
        path = Path(folder) / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if path.stat().st_size != record[name]["bytes"]:
            raise CheckpointError(f"{path} has {path.stat().st_size} bytes, {record[name]['bytes']} were saved")
        if file_sha256(path) != record[name]["sha256"]:
            raise CheckpointError(f"{path} has changed since it was saved (SHA-256 differs)")


def verifies(checkpoint: Path) -> bool:
    """Whether :func:`verify_checkpoint` accepts ``checkpoint`` with its training state."""
    try:
        verify_checkpoint(checkpoint, with_state=True)
    except CheckpointError:
        return False
    return True


def weights_sha256(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's weights file: the recorded one once verified (computed for a
    checkpoint saved before hashes). Identifies the trained model in provenance records."""
    checkpoint = Path(checkpoint)
    verify_checkpoint(checkpoint)
    record = recorded_hashes(checkpoint)
    return record[WEIGHTS]["sha256"] if record else file_sha256(checkpoint / WEIGHTS)


# Keys added to the config after runs had been saved without them -> the value those runs were
# trained with. A saved config.json read without one of these keys reads this value, never the
# key's current default.
VALUES_BEFORE_KEYS_EXISTED = {
    "lora_init": "gaussian",
    "reward.standardize": "epoch",
    "reward.mask_fallback": "ones",
    "val.fraction": 0.0,  # runs before held-out validation trained on every input
    "val.inputimg_dir": "",
    "train.skip_ratio_overflow": False,
    "resize_filter": "bicubic",
    "research_code_compat": False,
    "use_xformers": False,
    "sample.edit_format": "png",
    "sample.generation_autocast": False,
}
# Saved values whose spelling changed, behaviour unchanged -> today's spelling.
RESPELLED_VALUES = {
    "pretrained.revision": {"": "main"},  # "" asked the hub for its default revision, "main"
    "gradient_checkpointing": {False: "never", True: "always"},  # was a bool
}


def saved_run_config(checkpoint: Path):
    """The resolved config of the run that wrote ``checkpoint`` (``<run>/config.json``), in today's
    keys: a key the run predates reads as :data:`VALUES_BEFORE_KEYS_EXISTED` says."""
    import ml_collections

    path = run_folder_of(checkpoint) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: cannot tell how {checkpoint} was trained")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    for key, old_value in VALUES_BEFORE_KEYS_EXISTED.items():
        section, leaf = _section_of(saved, key)
        section.setdefault(leaf, old_value)
    for key, spellings in RESPELLED_VALUES.items():
        section, leaf = _section_of(saved, key)
        if isinstance(section.get(leaf), (str, bool)) and section[leaf] in spellings:
            section[leaf] = spellings[section[leaf]]
    return ml_collections.ConfigDict(saved)


def _section_of(tree: dict, key: str) -> tuple[dict, str]:
    """(the dict holding dotted ``key`` in the nested ``tree``, created if missing; its last part)."""
    *parents, leaf = key.split(".")
    for parent in parents:
        tree = tree.setdefault(parent, {})
    return tree, leaf


# Settings a resumed run must share with the run that wrote its checkpoint.
MODEL_KEYS = ("pretrained.model", "pretrained.revision") + ARCHITECTURE_KEYS


def check_same_model(config, saved, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` on another base model or architecture than it was trained on."""
    differing = [f"{key}: run {value_at(saved, key)!r} vs now {value_at(config, key)!r}"
                 for key in MODEL_KEYS if value_at(saved, key) != value_at(config, key)]
    if differing:
        raise ValueError(f"cannot resume {checkpoint} with another model ({'; '.join(differing)}); "
                         f"set these keys as in the run's config.json")


# Keys a resumed run takes from its own command line: where, how long and how fast to run, not
# what is trained. Every other key keeps the run's value.
RESUME_SETTINGS = ("load_checkpoint", "run_name", "logdir", "num_epochs", "save_freq", "num_checkpoint_limit",
                   "wandb_project", "demo_root", "overwrite", "gradient_checkpointing", "inputimg_dir",
                   "styleimg_dir", "sample.sample_savedir", "reward.batch_size", "reward.overlap",
                   "reward.per_image_constants", "reward.offload", "val.every")
# Dict-valued keys, replaced as a whole.
WHOLE_DICT_KEYS = ("reward.weights",)


def resumed_config(config, checkpoint: Path):
    """The config to resume ``checkpoint`` with, so that the run goes on with the behaviour it was
    trained with: the run's value of every key (:func:`saved_run_config`, so keys the run
    predates read as their old values) but :data:`RESUME_SETTINGS`, which come from ``config``.

    Refuses another base model or architecture (:func:`check_same_model`); logs each key whose
    value in ``config`` is replaced, and each key of ``config`` that the run's config.json lacks.
    """
    saved = saved_run_config(checkpoint)
    check_same_model(config, saved, checkpoint)
    resumed = copy.deepcopy(config)
    saved_values = dict(flat_items(saved, WHOLE_DICT_KEYS))
    for key, value in flat_items(config, WHOLE_DICT_KEYS):
        if key in RESUME_SETTINGS:
            continue
        if key not in saved_values:
            logger.warning("resuming %s: its run's config.json has no %s; using %r", checkpoint, key, value)
        elif saved_values[key] != value:
            logger.warning("resuming %s with the run's %s = %r (this config: %r)",
                           checkpoint, key, saved_values[key], value)
            _set_key(resumed, key, saved_values[key], checkpoint)
    return resumed


def _set_key(config, key: str, value, checkpoint: Path) -> None:
    *parents, leaf = key.split(".")
    for parent in parents:
        config = config[parent]
    try:
        config[leaf] = value
    except TypeError as error:
        raise ValueError(f"the run of {checkpoint} has {key} = {value!r}, which this config cannot take: "
                         f"{error}") from error


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], architecture: dict[str, str]) -> None:
    """Write the trainable weights to ``path`` (safetensors) with the architecture as metadata."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"format": "editspecialists-1", **architecture})


def load_weights(policy, checkpoint: str | Path, architecture: dict[str, str]) -> None:
    """Load a checkpoint's weights into ``policy``; any mismatch is an error that names it.

    The file is verified against the checkpoint's hashes (:func:`verify_checkpoint`), its
    architecture metadata, exact key set and shapes are checked, and every value must be finite,
    so loading can never silently do nothing or load damaged weights.
    """
    from safetensors import SafetensorError, safe_open

    verify_checkpoint(checkpoint)
    path = Path(checkpoint) / WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        saved = load_file(str(path))
    except SafetensorError as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from error
    differing = [f"{key}: checkpoint {metadata.get(key)!r} vs config {value!r}"
                 for key, value in architecture.items() if metadata.get(key) != value]
    if differing:
        raise ValueError(f"{path} was saved with another architecture ({'; '.join(differing)})")
    expected = policy.trainable_state_dict()
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}")
    shapes = [f"{k}: {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if saved[k].shape != v.shape]
    if shapes:
        raise ValueError(f"{path} has tensors of other shapes: {shapes[:5]}")
    not_finite = [key for key, tensor in saved.items() if not torch.isfinite(tensor).all()]
    if not_finite:
        raise CheckpointError(f"{path} holds non-finite values (inf or nan) in {len(not_finite)} tensor(s): "
                              f"{', '.join(not_finite[:3])}")
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


def folder_bytes(folder: Path) -> int:
    """Total size in bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (most often a full disk); the message names the folder, the
    space a checkpoint takes and the space free."""


def save_failure(folder: Path, reason: str, needed: int | None) -> CheckpointSaveError:
    """The error that stops a run whose checkpoint ``folder`` could not be written: ``reason``,
    the bytes a checkpoint takes (``needed``: the previous checkpoint's size, None if this is the
    first) and the bytes free on that disk."""
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    size = f"a checkpoint takes {_megabytes(needed)}" if needed else "this is the run's first checkpoint"
    return CheckpointSaveError(
        f"could not save checkpoint {folder}: {reason}. {size}; {_megabytes(free)} free on its disk. "
        f"Earlier checkpoints are intact: free some space and resume with --config.load_checkpoint={run_folder_of(folder)}"
    )


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def check_free_space(folder: Path, needed: int | None) -> None:
    """Refuse to start writing checkpoint ``folder`` when its disk has less free space than the
    previous checkpoint took (``needed``; no check before the first)."""
    if needed and shutil.disk_usage(folder.parent).free < needed:
        raise save_failure(folder, "not enough free space to start writing it", needed)


def read_trainer_state(checkpoint: Path) -> dict:
    """``{"epoch": next epoch to run, "global_step": optimizer steps so far}`` of a checkpoint."""
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
