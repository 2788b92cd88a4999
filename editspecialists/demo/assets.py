"""Everything the demo presets need, built on first use in the cache (:mod:`editspecialists.demo.cache`).

Layout under the cache folder (default ``~/.cache/editspecialists``, or ``$EDITSPECIALISTS_CACHE``)::

    demo-images/inputs, demo-images/styles   demo images (editspecialists.demo.images)
    demo-held-out                            held-out demo cars, never trained on (validation)
    demo-held-out-wide                       96 more of them (config/eval.py:demo_wide)
    demo-editor                              tiny InstructPix2Pix pretrained on the demo task
    demo-kontext-editor                      tiny FLUX.1 Kontext pretrained on the demo task (kontext preset)
    instruct-pix2pix, <role>                 tiny random stand-ins of the policy, feedback and
                                             evaluation models

The tests build into the same folders, so the demo reuses what the tests built and vice versa.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from editspecialists.config_keys import value_at
from editspecialists.demo import cache, evaluation_standins, feedback_standins
from editspecialists.demo.kontext_editor import kontext_editor, kontext_editor_folder
from editspecialists.diffusion.pipeline import FLUX_KONTEXT
from editspecialists.demo.editor import demo_editor, demo_editor_folder
from editspecialists.demo.images import write_demo_images, write_held_out_images, write_wide_held_out_images
from editspecialists.launch import process_state

logger = logging.getLogger(__name__)


def demo_paths(root: str | Path | None = None) -> dict[str, str]:
    """Data folders and pretrained demo pipeline under ``root`` (default: the cache; nothing is built)."""
    root = Path(root) if root else cache.default_cache_root()
    images = demo_images_folder(root)
    paths = {"inputs": images / "inputs", "styles": images / "styles", "held_out": held_out_folder(root),
             "held_out_wide": wide_held_out_folder(root), "policy": demo_editor_folder(root),
             "kontext": kontext_editor_folder(root)}
    return {key: str(value) for key, value in paths.items()}


def demo_images_folder(root: Path) -> Path:
    """Where the demo images are kept under ``root`` (nothing is built here)."""
    return Path(root) / "demo-images"


def held_out_folder(root: Path) -> Path:
    """Where the held-out demo cars are kept under ``root`` (nothing is built here)."""
    return Path(root) / "demo-held-out"


def wide_held_out_folder(root: Path) -> Path:
    """Where the wide held-out set of demo cars is kept under ``root`` (nothing is built here)."""
    return Path(root) / "demo-held-out-wide"


def demo_models_config(root: str | Path | None = None) -> dict[str, str]:
    """Config ``models`` entries pointing every feedback and evaluation model at its tiny version
    under ``root`` (default: the cache; nothing is built here)."""
    return evaluation_standins.tiny_models_config(Path(root) if root else cache.default_cache_root())


def ensure_demo_assets(root: str | Path | None = None, *, policy: bool = True,
                       evaluation: bool = False, kontext: bool = False) -> Path:
    """Build what is missing under ``root`` (default: the cache) and return it: demo images (inputs,
    styles, held-out cars, the wide held-out set) and tiny feedback models always, the pretrained demo editor when
    ``policy`` (a few minutes on one CPU thread, once), the pretrained tiny FLUX.1 Kontext when
    ``kontext`` (about four minutes, once), the tiny evaluation-only models (HPS, PickScore,
    ImageReward) when ``evaluation``.
    Logs each build and, if anything was built, the total time."""
    root = Path(root) if root else cache.default_cache_root()
    start, builds_before = time.perf_counter(), cache.builds_done()
    cache.cached_build(demo_images_folder(root), write_demo_images)
    cache.cached_build(held_out_folder(root), write_held_out_images)
    cache.cached_build(wide_held_out_folder(root), write_wide_held_out_images)
    feedback_standins.build_all(root)
    if policy:
        demo_editor(root)
    if kontext:
        kontext_editor(root)
    if evaluation:
        evaluation_standins.build_all(root)
    built = cache.builds_done() - builds_before
    if built:
        logger.info("demo assets: %d built in %.0f s under %s (reused by later runs)",
                    built, time.perf_counter() - start, root)
    return root


def prepare_demo_assets(config, *, policy: bool = True, evaluation: bool = False) -> None:
    """Build the demo's images and tiny models when the config asks for them (demo presets);
    see :func:`ensure_demo_assets` for ``policy`` and ``evaluation``
    (with ``evaluation``, the notice that the evaluation-only stand-ins have random weights)."""
    if config.get("demo_root"):
        state = process_state()
        silence_random_weight_warnings(explain=state.is_main_process and evaluation)
        kontext = value_at(config, "pretrained.family", "") == FLUX_KONTEXT
        with state.main_process_first():
            ensure_demo_assets(config.demo_root, policy=policy and not kontext, evaluation=evaluation,
                               kontext=policy and kontext)


def silence_random_weight_warnings(explain: bool) -> None:
    """Drop open_clip's "No pretrained weights loaded ... initialized randomly" warning, expected at
    every load of the demo's random evaluation stand-ins, and, if ``explain``, say once why."""
    logging.getLogger().addFilter(
        lambda record: "No pretrained weights loaded" not in record.getMessage())
    if explain:
        logging.getLogger(__name__).info(
            "demo: the evaluation-only models (CLIP, DINOv2, HPS, PickScore, ImageReward) are tiny stand-ins "
            "with random weights: their metrics check the plumbing, not image quality (the feedback models "
            "are trained on the demo's images)")
