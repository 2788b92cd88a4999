"""What the scripts share before their work starts: logging, the process state, demo assets."""

from __future__ import annotations

import logging
from pathlib import Path


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def process_state():
    """accelerate's process state, honouring ACCELERATE_USE_CPU like ``Accelerator`` does.

    (A bare ``PartialState()`` created before the ``Accelerator`` ignores that variable and
    would turn a multi-process CPU launch into independent single processes.)
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def prepare_demo_assets(config, *, policy: bool = True, evaluation: bool = False) -> None:
    """Build the demo's images and tiny models when the config asks for them (demo presets);
    see :func:`editspecialists.demo.assets.ensure_demo_assets` for the flags."""
    if config.get("demo_root"):
        from editspecialists.demo.assets import ensure_demo_assets

        with process_state().main_process_first():
            ensure_demo_assets(config.demo_root, policy=policy, evaluation=evaluation)
