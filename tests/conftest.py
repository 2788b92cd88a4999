"""Shared fixtures: tiny models built once in the suite's build cache and reused across test runs.

The suite writes only under ``$EDITSPECIALISTS_CACHE`` when it is set (CI sets it), else under a
folder of the system's temporary directory (:data:`SUITE_CACHE`), never the user's own cache;
every subprocess a test starts inherits the choice.
"""

import getpass
import os
import tempfile
from pathlib import Path

import pytest
import torch

from editspecialists.demo.cache import CACHE_ENV

SUITE_CACHE = Path(tempfile.gettempdir()) / f"editspecialists-tests-{getpass.getuser()}"
CACHE_CHOSEN_BY_USER = CACHE_ENV in os.environ
os.environ.setdefault(CACHE_ENV, str(SUITE_CACHE))
# Seconds a test may run (pytest.ini's ``timeout`` for the others): end-to-end runs and real sizes.
TIMEOUTS = {"realsize": 3600, "slow": 1800}

# Tiny models are overhead-bound: one thread per test process avoids oversubscribing small CI
# machines and is as fast as two.
torch.set_num_threads(1)
# No test reaches wandb's servers, even where credentials exist (subprocesses inherit this).
os.environ["WANDB_MODE"] = "disabled"


def pytest_collection_modifyitems(items):
    """A slow or realsize test without a timeout of its own gets :data:`TIMEOUTS`'."""
    for item in items:
        marked = [TIMEOUTS[name] for name in TIMEOUTS if item.get_closest_marker(name)]
        if marked and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(max(marked)))


@pytest.fixture(scope="session")
def tiny_root() -> Path:
    """The suite's build cache (absolute: subprocess tests run in other working folders)."""
    from editspecialists.demo.cache import default_cache_root

    return default_cache_root()


@pytest.fixture(scope="session")
def tiny_ip2p_path(tiny_root) -> Path:
    from editspecialists.demo.policy_standin import tiny_ip2p

    return tiny_ip2p(tiny_root)


@pytest.fixture(scope="session")
def tiny_kontext_path(tiny_root) -> Path:
    """The tiny FLUX.1 Kontext [dev] stand-in (editspecialists.demo.kontext_standin)."""
    from editspecialists.demo.kontext_standin import tiny_kontext

    return tiny_kontext(tiny_root)


@pytest.fixture(scope="session")
def kontext_editor_path(tiny_root) -> Path:
    """The tiny FLUX.1 Kontext pretrained on the demo task (editspecialists.demo.kontext_editor;
    minutes on an empty cache)."""
    from editspecialists.demo.kontext_editor import kontext_editor

    return kontext_editor(tiny_root)


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
