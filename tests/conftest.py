"""Shared fixtures: tiny models built once in the cache of the demo and reused across test runs."""

import os
from pathlib import Path

import pytest
import torch

# Tiny models are overhead-bound: one thread per test process avoids oversubscribing small CI
# machines and is as fast as two.
torch.set_num_threads(1)
# No test reaches wandb's servers, even where credentials exist (subprocesses inherit this).
os.environ["WANDB_MODE"] = "disabled"


@pytest.fixture(scope="session")
def tiny_root() -> Path:
    """The build cache (``$EDITSPECIALISTS_CACHE`` or ``~/.cache/editspecialists``, absolute:
    subprocess tests run in other working folders), shared with the demo: what one built, the
    other reuses."""
    from editspecialists.demo.cache import default_cache_root

    return default_cache_root()


@pytest.fixture(scope="session")
def tiny_ip2p_path(tiny_root) -> Path:
    from editspecialists.demo.policy_standin import tiny_ip2p

    return tiny_ip2p(tiny_root)


@pytest.fixture(scope="session")
def demo_assets_root(tiny_root) -> Path:
    """The demo presets' assets (images, pretrained demo editor, tiny feedback and evaluation
    models) in the cache, built unless the demo or an earlier test run built them."""
    from editspecialists.demo.assets import ensure_demo_assets

    return ensure_demo_assets(tiny_root, evaluation=True)


@pytest.fixture(autouse=True)
def _seed_and_fresh_accelerate_state():
    """Seed, and give each test a fresh accelerate singleton state (mixed precision differs)."""
    torch.manual_seed(0)
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def scripts_dir(tmp_path) -> Path:
    """A working folder with the repository's ``scripts/`` and ``config/`` (for script runs)."""
    repo = Path(__file__).resolve().parents[1]
    for name in ("scripts", "config"):
        (tmp_path / name).symlink_to(repo / name)
    return tmp_path
