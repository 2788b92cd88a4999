"""Everything the demo needs, built on first use under one folder (default ``./demo_assets``).

Layout::

    <root>/data/inputs, <root>/data/styles   demo images (editspecialists.data.demo)
    <root>/models/demo-editor                 tiny InstructPix2Pix pretrained on the demo task
    <root>/models/<role>                      tiny feedback/evaluation models (tiny_feedback)
"""

from __future__ import annotations

from pathlib import Path

from editspecialists.data.demo import write_demo_images

FEEDBACK_ROLES = ("detector", "segmenter", "depth", "dinov2", "clip", "dreamsim")


def demo_paths(root: str | Path = "demo_assets") -> dict[str, str]:
    """Where :func:`ensure_demo_assets` puts each asset (nothing is built here)."""
    root = Path(root)
    paths = {"inputs": root / "data" / "inputs", "styles": root / "data" / "styles",
             "policy": root / "models" / "demo-editor"}
    paths.update({role: root / "models" / role for role in FEEDBACK_ROLES})
    return {key: str(value) for key, value in paths.items()}


def ensure_demo_assets(root: str | Path = "demo_assets") -> dict[str, str]:
    """Build (once; cached and file-locked) the demo images and models; returns their paths."""
    from editspecialists.testing import tiny_feedback
    from editspecialists.testing.demo_editor import demo_editor
    from editspecialists.testing.tiny import cached_build

    root = Path(root)
    cached_build(root / "data", lambda folder: write_demo_images(folder))
    built = {"policy": str(demo_editor(root / "models"))}
    built.update(tiny_feedback.build_all(root / "models"))
    expected = demo_paths(root)
    for role, path in built.items():
        if role in expected and Path(path).resolve() != Path(expected[role]).resolve():
            raise RuntimeError(f"demo asset {role} was built at {path}, expected {expected[role]}")
    return expected
