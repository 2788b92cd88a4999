"""Shared fixtures: tiny models built once per cache folder and reused across test runs."""

import os
from pathlib import Path

import pytest
import torch

# Tiny models are overhead-bound: one thread per test process avoids oversubscribing small CI
# machines and is as fast as two.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_root() -> Path:
    """Cache folder for tiny models (``$EDITSPECIALISTS_CACHE`` or ``<repo>/.cache``), absolute:
    subprocess tests run in other working folders."""
    root = Path(os.environ.get("EDITSPECIALISTS_CACHE", REPO / ".cache")).resolve()
    return root / "tiny"


@pytest.fixture(scope="session")
def tiny_ip2p_path(tiny_root) -> Path:
    from editspecialists.demo.policy_standin import tiny_ip2p

    return tiny_ip2p(tiny_root)


@pytest.fixture(scope="session")
def demo_assets_root(tiny_root) -> Path:
    """The demo presets' assets (images, pretrained demo editor, tiny feedback and evaluation
    models), built once next to the tiny-model cache: a stand-in for ``./demo_assets``."""
    from editspecialists.demo.assets import ensure_demo_assets

    root = tiny_root.parent / "demo_assets"
    ensure_demo_assets(root, evaluation=True)
    return root


@pytest.fixture(autouse=True)
def _seed_and_fresh_accelerate_state():
    """Seed, and give each test a fresh accelerate singleton state (mixed precision differs)."""
    torch.manual_seed(0)
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
