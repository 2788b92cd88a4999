"""The suite's own settings: where it builds, how long a test may run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from editspecialists.demo.cache import CACHE_ENV, default_cache_root
from tests import conftest

REPO = Path(__file__).resolve().parents[1]


def test_the_suite_builds_in_its_own_cache_unless_one_is_chosen(tiny_root):
    expected = Path(os.environ[CACHE_ENV]).resolve() if conftest.CACHE_CHOSEN_BY_USER else conftest.SUITE_CACHE.resolve()
    assert tiny_root == default_cache_root() == expected
    assert tiny_root != (Path.home() / ".cache" / "editspecialists").resolve() or conftest.CACHE_CHOSEN_BY_USER


PROBE = """import pytest

{markers}
def test_probe(request):
    marker = request.node.get_closest_marker("timeout")
    print("TIMEOUT", marker.args[0] if marker else request.config.getini("timeout"))
"""


@pytest.mark.parametrize("markers, expected", [((), "300"), (("slow",), "1800"), (("slow", "timeout(7)"), "7")])
def test_every_test_has_a_timeout_and_slow_ones_more(tmp_path, markers, expected):
    """pytest.ini's timeout for every test; the conftest's for slow ones without their own."""
    probe = tmp_path / "tests"
    probe.mkdir()
    (probe / "__init__.py").write_text("")
    (probe / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (probe / "test_probe.py").write_text(PROBE.format(markers="\n".join(f"@pytest.mark.{m}" for m in markers)))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             "-c", str(REPO / "pytest.ini"), "--rootdir", str(tmp_path), str(probe / "test_probe.py")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert f"TIMEOUT {expected}" in result.stdout, result.stdout + result.stderr


def test_no_test_module_imports_another():
    """What tests share lives in tests/helpers.py (and conftest.py), never in a test module."""
    pattern = re.compile(r"^\s*(from tests\.test_\w+ import|import tests\.test_)", re.M)
    importing = [path.name for path in sorted((REPO / "tests").glob("*.py")) if pattern.search(path.read_text())]
    assert importing == []
