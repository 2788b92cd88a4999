"""The suite's own settings: where it builds, how long a test may run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from editspecialists.demo.cache import CACHE_ENV, default_cache_root
from tests import conftest
from tests.helpers import run_process_group

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


STUCK_LAUNCHER = """import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stderr=open(sys.argv[1], "w"))
open(sys.argv[2], "w").write(str(worker.pid))
time.sleep(600)
"""


def test_a_launch_past_its_timeout_fails_with_every_processs_stacks_and_leaves_none_behind(tmp_path):
    """What a hung two-process launch leaves (tests.helpers.run_process_group): the test fails with
    the launcher's stacks, the worker prints its own (here to a file of its own, so that the two
    cannot interleave), and the worker does not outlive the test."""
    worker_stderr, worker_pid = tmp_path / "worker.txt", tmp_path / "worker.pid"
    with pytest.raises(pytest.fail.Exception) as failure:
        run_process_group([sys.executable, "-c", STUCK_LAUNCHER, str(worker_stderr), str(worker_pid)], timeout=5)
    message = str(failure.value)
    assert "ran past 5 s; the end of its output, stacks included" in message
    assert "Fatal Python error: Aborted" in message and 'File "<string>", line 4 in <module>' in message, message
    worker = worker_stderr.read_text()
    assert "Fatal Python error: Aborted" in worker and 'File "<string>", line 1 in <module>' in worker, worker
    status = Path(f"/proc/{worker_pid.read_text()}/status")
    assert not status.exists() or "State:\tZ" in status.read_text(), "the worker was killed (at most a zombie)"


def test_an_aborted_process_leaves_its_stacks_in_the_output_without_its_module_list():
    """A worker that aborts (as one process of a two-process launch once did in CI, its stacks lost
    to the message's length) prints its stacks, then a line listing every extension module it
    loaded: run_process_group cuts that line short, so the few thousand characters a failing test
    quotes hold the error and the stacks."""
    aborting = "import os, numpy\ndef end():\n    os.abort()\nend()"
    result = run_process_group([sys.executable, "-c", aborting], timeout=60)
    assert result.returncode == -6
    assert "Fatal Python error: Aborted" in result.stderr and 'line 3 in end' in result.stderr, result.stderr
    assert re.search(r"^Extension modules: \(\d+, list left out\)$", result.stderr, flags=re.M), result.stderr
    assert "numpy" not in result.stderr
