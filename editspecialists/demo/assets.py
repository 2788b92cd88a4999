"""Everything the demo presets need, built on first use under one folder (default ``./demo_assets``).

Layout::

    <root>/data/inputs, <root>/data/styles   demo images (editspecialists.demo.images)
    <root>/models/demo-editor-v<N>            tiny InstructPix2Pix pretrained on the demo task
    <root>/models/<role>                      tiny feedback and evaluation models

Each piece is cached and file-locked (see :func:`editspecialists.demo.policy_standin.cached_build`), so
concurrent processes of one launch build it once.
"""

from __future__ import annotations

from pathlib import Path

from editspecialists.demo.images import write_demo_images
from editspecialists.demo import evaluation_standins, feedback_standins
from editspecialists.demo.editor import demo_editor, demo_editor_folder
from editspecialists.demo.cache import cached_build


def demo_paths(root: str | Path = "demo_assets") -> dict[str, str]:
    """Data folders and pretrained demo pipeline under ``root`` (nothing is built here)."""
    root = Path(root)
    paths = {"inputs": root / "data" / "inputs", "styles": root / "data" / "styles",
             "policy": demo_editor_folder(root / "models")}
    return {key: str(value) for key, value in paths.items()}


def demo_models_config(root: str | Path = "demo_assets") -> dict[str, str]:
    """Config ``models`` entries pointing every feedback and evaluation model at its tiny version
    under ``root`` (nothing is built here)."""
    return evaluation_standins.tiny_models_config(Path(root) / "models")


def ensure_demo_assets(root: str | Path = "demo_assets", *, policy: bool = True,
                       evaluation: bool = False) -> None:
    """Build what is missing: demo images and tiny feedback models always, the pretrained demo
    editor when ``policy`` (about two minutes on two CPU cores, once), the tiny evaluation-only
    models (HPS, PickScore, ImageReward) when ``evaluation``."""
    root = Path(root)
    cached_build(root / "data", write_demo_images)
    feedback_standins.build_all(root / "models")
    if policy:
        demo_editor(root / "models")
    if evaluation:
        evaluation_standins.build_all(root / "models")
