"""Checkpoints: fine-tuned weights in safetensors plus the full training state.

Layout of a run folder::

    <run>/config.json                  resolved config (generate/resume rebuild the model from it)
    <run>/config_resume_0005.json      the config of a resume at epoch 5 (see training/run_folder.py)
    <run>/checkpoints/checkpoint_0005/ one folder per saved epoch
        weights.safetensors            trainable weights + architecture metadata
        trainer.json                   {"epoch": next epoch to run, "global_step": ...}
        state/                         accelerate state (optimizer, RNG, ...) for exact resume
        hashes.json                    size and SHA-256 of every file above (of the tensors of a
                                       safetensors file), written last
    <run>/checkpoints/checkpoint_0005_step_42/  saved by a run stopped within epoch 5 (after
                                       optimizer step 42; training/stopping.py): as above, and
        samples_<process>.safetensors  each process's sampled edits of the epoch, ranked
                                       (trainer.json's "within_epoch" says where to go on)

Folders are written under a temporary name and renamed when complete, so an interrupted save
never leaves a checkpoint that looks valid. ``hashes.json`` is checked whenever a checkpoint is
used (:func:`verify_checkpoint`): a file changed on disk after the save is an error naming it,
and a run folder resolves to its newest checkpoint that verifies. Checkpoints written before
hashes existed have no ``hashes.json``; their weights are still checked for readable, finite
values when loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


logger = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
TRAINER_STATE = "trainer.json"
ACCELERATE_STATE = "state"
HASHES = "hashes.json"
RUN_CONFIG = "config.json"  # the run's resolved config, in the run folder
CHECKPOINTS = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)(?:_step_(\d+))?$")
# Settings that change the set or shape of the saved weights.
ARCHITECTURE_KEYS = ("use_lora", "lora_rank", "lora_alpha")


def architecture_of(config) -> dict[str, str]:
    """The architecture settings stored in (and checked against) a checkpoint's metadata."""
    return {key: str(config[key]) for key in ARCHITECTURE_KEYS}


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """``checkpoint_<epoch>``: saved at the start of ``epoch`` (epochs before it done);
    ``checkpoint_<epoch>_step_<step>``: saved by a run stopped within ``epoch`` after optimizer
    step ``step``."""
    return f"checkpoint_{epoch:04d}" + (f"_step_{step}" if step is not None else "")


def checkpoint_order(path: Path) -> tuple[int, int]:
    """(epoch, step or -1) of a checkpoint folder's name: sorts checkpoints by training progress."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)), int(match.group(2) or -1)


def run_folder_of(checkpoint: str | Path) -> Path:
    """The run folder that holds ``checkpoint`` (``<run>/checkpoints/checkpoint_N``)."""
    return Path(checkpoint).parent.parent


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CHECKPOINT_RE.match(p.name) and (p / WEIGHTS).is_file()]
    return sorted(found, key=checkpoint_order)


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
    """Hex SHA-256 of a file's bytes (read in 16 MiB blocks); see :func:`remembered`."""
    def digest_bytes(handle, digest):
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)

    return remembered(path, "bytes", digest_bytes)


def tensors_sha256(path: Path) -> str:
    """Hex SHA-256 of the content of a safetensors file: each tensor in name order (name, dtype,
    shape, then its bytes), then the metadata with its keys sorted. Files holding the same tensors
    and metadata hash alike whatever the order of their header; a file that is not a complete
    safetensors file raises :class:`CheckpointError`."""
    def digest_tensors(handle, digest):
        header, data_start = safetensors_header(path, handle)
        size = Path(path).stat().st_size
        metadata = header.pop("__metadata__", None) or {}
        for name in sorted(header):
            try:
                begin, end = (int(offset) for offset in header[name]["data_offsets"])
                described = json.dumps([name, header[name]["dtype"], header[name]["shape"]])
            except (KeyError, TypeError, ValueError) as error:
                raise CheckpointError(f"{path} is not a safetensors file (entry {name}: {error!r})") from error
            if not 0 <= begin <= end <= size - data_start:
                raise CheckpointError(f"{path} is cut short: tensor {name} ends past the end of the file")
            digest.update(described.encode())
            handle.seek(data_start + begin)
            for offset in range(begin, end, 1 << 24):
                digest.update(handle.read(min(1 << 24, end - offset)))
        digest.update(json.dumps(metadata, sort_keys=True).encode())

    return remembered(path, "tensors", digest_tensors)


def safetensors_header(path: Path, handle) -> tuple[dict, int]:
    """(the parsed JSON header of an open safetensors file, the offset where its data starts)."""
    length = int.from_bytes(handle.read(8), "little")
    if not 2 <= length <= Path(path).stat().st_size - 8:
        raise CheckpointError(f"{path} is not a safetensors file (header length {length})")
    try:
        header = json.loads(handle.read(length))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not a safetensors file (unreadable header: {error})") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return header, 8 + length


def remembered(path: Path, kind: str, digest_into) -> str:
    """``digest_into(open file, sha256 object)``'s hex digest of ``path``, remembered for the process
    while the file (its inode: a file written aside and renamed is another), size and modification
    time stay the same, so that resolving, loading and recording provenance read a large weights
    file once."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, kind)
    if key not in _HASHED:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            digest_into(handle, digest)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


_HASHED: dict[tuple[str, int, int, int, str], str] = {}
# hashes.json's "hash_of" of a file hashed by :func:`tensors_sha256` (absent: the file's bytes).
TENSOR_CONTENT = "tensors"


def file_record(path: Path) -> dict:
    """hashes.json's entry of one file: its size and SHA-256, of its tensors for a safetensors
    file (so that a rewritten header with the same tensors still verifies), else of its bytes."""
    if path.suffix == ".safetensors":
        return {"bytes": path.stat().st_size, "sha256": tensors_sha256(path), "hash_of": TENSOR_CONTENT}
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def record_hashes(folder: Path) -> None:
    """Write ``folder/hashes.json``: ``{relative path: {"bytes", "sha256"[, "hash_of"]}}`` of every
    file in it (:func:`file_record`)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != HASHES)
    record = {p.relative_to(folder).as_posix(): file_record(p) for p in files}
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
        saved, size = record[name], path.stat().st_size
        if saved.get("hash_of") == TENSOR_CONTENT:
            if recorded_content_differs(path, saved["sha256"]):
                if size != saved["bytes"]:
                    raise CheckpointError(f"{path} has {size} bytes, {saved['bytes']} were saved")
                raise CheckpointError(f"{path} has changed since it was saved (SHA-256 of its tensors differs)")
            continue
        if size != saved["bytes"]:
            raise CheckpointError(f"{path} has {size} bytes, {saved['bytes']} were saved")
        if file_sha256(path) != saved["sha256"]:
            raise CheckpointError(f"{path} has changed since it was saved (SHA-256 differs)")


def recorded_content_differs(path: Path, sha256: str) -> bool:
    """Whether the tensors of safetensors file ``path`` differ from those hashed as ``sha256``
    (a file that is no longer a complete safetensors file differs)."""
    try:
        return tensors_sha256(path) != sha256
    except CheckpointError:
        return True


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
    "pretrained.family": "instruct_pix2pix",
    "pretrained.max_sequence_length": 512,
    "lora_targets": "",
    "sample.sde_window": "",
    "reward.ranking": "scores",
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


def read_trainer_state(checkpoint: Path) -> dict:
    """``{"epoch": next epoch to run, "global_step": optimizer steps so far}`` of a checkpoint."""
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
