"""The editing app on the demo model: through its API (gradio_client), and a screenshot of the page in
headless Chromium (the README's docs/app.png comes from it)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")

from editspecialists.specialist.app import BASE_LABEL, SPECIALIST_LABEL  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo_app(demo_assets_root, tmp_path_factory):
    """``scripts/app.py --model demo`` served from a folder without demo runs (the untrained demo
    editor); yields its ``url`` and the ``log`` file of its console (unbuffered, as a terminal shows it)."""
    tmp_path = tmp_path_factory.mktemp("app")
    port = free_port()
    log = open(tmp_path / "app.log", "w")
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "app.py"), "--model=demo", f"--port={port}"],
                               cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the app did not start:\n{(tmp_path / 'app.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield SimpleNamespace(url=url, log=tmp_path / "app.log")
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_the_app_says_what_it_loads_then_its_address(demo_app):
    lines = [line for line in demo_app.log.read_text().splitlines() if line.strip()]
    said = {prefix: next(i for i, line in enumerate(lines) if line.startswith(prefix)) for prefix in (
        "app: no demo run with a checkpoint under logs/demo_brightness: the untrained demo editor",
        "app: loading the specialist ", "app: editing the example images")}
    address = next(i for i, line in enumerate(lines) if demo_app.url.rstrip("/") in line)
    assert list(said.values()) == sorted(said.values()) and max(said.values()) < address, lines
    assert lines[said["app: loading the specialist "]].endswith(" (--model demo) ...")


@pytest.mark.slow
def test_the_app_returns_both_edits_at_the_inputs_size(demo_app, demo_assets_root, tmp_path):
    from gradio_client import Client, handle_file

    from editspecialists.demo.assets import demo_paths

    paths = demo_paths(demo_assets_root)
    wide = tmp_path / "wide.png"
    Image.open(sorted(Path(paths["inputs"]).glob("*.png"))[0]).resize((48, 32)).save(wide)
    styles = [handle_file(str(p)) for p in sorted(Path(paths["styles"]).glob("*.png"))[:2]]
    client = Client(demo_app.url, verbose=False)
    specialist, base = client.predict(handle_file(str(wide)), styles, "car", "lego", "", 3, 2, api_name="/edit")
    for edit in (specialist, base):
        assert Image.open(edit).size == (48, 32)
    with pytest.raises(Exception, match="one to 5 style images"):
        client.predict(handle_file(str(wide)), styles * 3, "car", "lego", "", 3, 2, api_name="/edit")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_screenshot_of_the_app_shows_both_result_panes(demo_app, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=20000", "--window-size=1280,860"]
    dom = subprocess.run([*flags, "--dump-dom", demo_app.url], capture_output=True, text=True, timeout=120).stdout
    assert SPECIALIST_LABEL in dom and BASE_LABEL in dom
    screenshot = tmp_path / "app.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", demo_app.url], capture_output=True, timeout=120)
    assert Image.open(screenshot).size == (1280, 860)
    print(f"screenshot: {screenshot}")
