"""What the scripts share besides the command line (see :mod:`editspecialists.command_line`):
logging, the process state, demo assets."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "PIL", "accelerate"):  # accelerate: INFO lines at every checkpoint
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

        state = process_state()
        silence_random_weight_warnings(explain=state.is_main_process)
        with state.main_process_first():
            ensure_demo_assets(config.demo_root, policy=policy, evaluation=evaluation)


def silence_random_weight_warnings(explain: bool) -> None:
    """Drop open_clip's "No pretrained weights loaded ... initialized randomly" warning, expected at
    every load of the demo's random stand-ins, and, if ``explain``, say once why."""
    logging.getLogger().addFilter(
        lambda record: "No pretrained weights loaded" not in record.getMessage())
    if explain:
        logging.getLogger(__name__).info(
            "demo: the feedback and evaluation models are tiny stand-ins with random weights (no "
            "pretrained weights to load): their scores check the plumbing, not image quality")
