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

from editspecialists.specialist.app import APP_MAX_SIDE, SPECIALIST_LABEL, base_label, edit_pair  # noqa: E402
from tests.helpers import oversized_png  # noqa: E402

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
    huge = oversized_png(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(Exception, match="20000x20000 pixels, more than the limit of 89478485"):
        client.predict(handle_file(str(huge)), styles, "car", "lego", "", 3, 2, api_name="/edit")
    with pytest.raises(Exception, match=r"the seed must be a whole number from 0 to 2\*\*64 - 1"):
        client.predict(handle_file(str(wide)), styles, "car", "lego", "", 2**70, 2, api_name="/edit")


def test_uploads_are_checked_and_downsized_as_they_are_read_and_seeds_validated(tiny_ip2p_path, tmp_path):
    """edit_pair (the app's edit) refuses an image over the pixel limit from its header, reads a
    large one downsized to APP_MAX_SIDE (the edits come back at that size) and refuses seeds a
    torch generator cannot take."""
    from editspecialists.specialist.pipeline import EditSpecialistPipeline

    base = EditSpecialistPipeline.from_base(str(tiny_ip2p_path), warn=False).to("cpu")
    base.info["resolution"] = 32
    style = tmp_path / "style.png"
    Image.new("RGB", (40, 40), (20, 20, 230)).save(style)
    large = tmp_path / "large.png"
    Image.new("RGB", (3000, 2000), (230, 20, 20)).save(large)
    edit, base_edit = edit_pair(base, None, str(large), [str(style)], "car", "lego", "", 1, 1)
    assert edit.size == base_edit.size == (APP_MAX_SIDE, round(APP_MAX_SIDE * 2 / 3))
    with pytest.raises(ValueError, match="huge.png: more than twice the limit of 89478485 pixels"):
        edit_pair(base, None, str(oversized_png(tmp_path / "huge.png", 20000, 20000)), [str(style)], "", "", "p", 1, 1)
    for seed in (2**70, -1, 1.5):
        with pytest.raises(ValueError, match=f"the seed must be a whole number from 0 to 2\\*\\*64 - 1 = "
                                             f"{2**64 - 1}, got {seed!r}"):
            edit_pair(base, None, str(large), [str(style)], "car", "lego", "", seed, 1)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_screenshot_of_the_app_shows_both_result_panes(demo_app, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=20000", "--window-size=1280,860"]
    dom = subprocess.run([*flags, "--dump-dom", demo_app.url], capture_output=True, text=True, timeout=120).stdout
    assert SPECIALIST_LABEL in dom and base_label({}) == "base InstructPix2Pix" and base_label({}) in dom
    screenshot = tmp_path / "app.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", demo_app.url], capture_output=True, timeout=120)
    assert Image.open(screenshot).size == (1280, 860)
    print(f"screenshot: {screenshot}")
