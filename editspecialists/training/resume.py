"""Resuming a run from its checkpoint: which settings come from the run, which from the command
line; pruning old checkpoints. (The checkpoint format itself: :mod:`editspecialists.formats.checkpoint`.)"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

from editspecialists.config_keys import flat_items, value_at
from editspecialists.formats.checkpoint import ARCHITECTURE_KEYS, list_checkpoints, saved_run_config

logger = logging.getLogger(__name__)

# Settings a resumed run must share with the run that wrote its checkpoint.
MODEL_KEYS = ("pretrained.model", "pretrained.revision", "pretrained.family", "lora_targets") + ARCHITECTURE_KEYS


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


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
