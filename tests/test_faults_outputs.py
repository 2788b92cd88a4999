"""Issue 26: generate.py and evaluate.py under real faults: a signal sent to the process, a write
that fails with ENOSPC inside the library writing (a temporary file pointed at /dev/full), an
evaluation killed between the renames of its files. Nothing is left that looks complete and is
not, earlier results stay, and the same command goes on."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from editspecialists import generation, writing
from editspecialists.command_line import command_with
from editspecialists.demo.images import write_demo_images
from editspecialists.evaluation import evaluator, report
from editspecialists.evaluation.evaluator import evaluate
from editspecialists.generation import generate_edits, read_manifest, write_manifest
from editspecialists.stopping import Stopped
from tests.helpers import EDITS, REPO, assert_complete, fault_config, load_config

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (ENOSPC on write)")


def signal_at_call(monkeypatch, owner, name: str, call: int, signum: int = signal.SIGTERM) -> None:
    """Send ``signum`` to this process right after the ``call``-th call of ``owner.name``."""
    original, calls = getattr(owner, name), []

    def patched(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(owner, name, patched)


# ------------------------------------------------------------------------------ generate.py
def test_generation_stops_after_its_batch_on_sigterm_and_the_same_command_finishes(tiny_ip2p_path, tmp_path,
                                                                                    monkeypatch):
    config = fault_config(tiny_ip2p_path, tmp_path)
    signal_at_call(monkeypatch, Image.Image, "save", 2)
    with pytest.raises(Stopped) as raised:
        generate_edits(config)
    folder = tmp_path / "edits" / "car_lego"
    assert raised.value.status == 128 + signal.SIGTERM
    assert str(raised.value) == (f"stopped by SIGTERM: 3 of the 8 edits to make are in {folder}. Make the rest "
                                 f"with: {command_with({})}")
    assert sorted(read_manifest(folder)) == EDITS[:3], "the batch in progress was finished and listed"
    assert sorted(p.name for p in folder.iterdir()) == sorted(EDITS[:3] + ["manifest.jsonl"])
    monkeypatch.undo()
    generate_edits(config)
    assert_complete(folder)


@needs_dev_full
def test_generation_on_a_full_disk_names_the_folder_and_keeps_the_listed_edits(tiny_ip2p_path, tmp_path,
                                                                                monkeypatch):
    """The 5th edit's temporary file is /dev/full: PIL's own write fails with ENOSPC."""
    config = fault_config(tiny_ip2p_path, tmp_path)
    folder = tmp_path / "edits" / "car_lego"
    load_editor = generation.load_editor

    def load_editor_on_a_full_disk(*args):
        os.symlink("/dev/full", folder / "edit_car_04.png.tmp")
        return load_editor(*args)

    monkeypatch.setattr(generation, "load_editor", load_editor_on_a_full_disk)
    with pytest.raises(writing.WriteFailedError) as raised:
        generate_edits(config)
    message = str(raised.value)
    assert message.startswith(f"could not write edits to {folder}: no space left on its disk. It needs about ")
    assert message.endswith(f"The edits listed in its manifest.jsonl are complete. Free some space, then make the "
                            f"rest with: {command_with({})}")
    assert sorted(read_manifest(folder)) == EDITS[:3]
    assert not list(folder.glob("*.tmp")), "the temporary file is removed"
    monkeypatch.undo()
    generate_edits(config)
    assert_complete(folder)


# ------------------------------------------------------------------------------ evaluate.py
@pytest.fixture
def l2_config(tmp_path):
    """An evaluation of l2_out over the whole frame (no model to load) of 4 edits (copies of the
    inputs) listed in their manifest."""
    config = load_config("eval")
    inputs, styles = write_demo_images(tmp_path / "data", num_inputs=4, num_styles=2)
    edits = tmp_path / "edits" / "car_lego"
    edits.mkdir(parents=True)
    manifest = {}
    for path in sorted(inputs.iterdir()):
        shutil.copy(path, edits / f"edit_{path.name}")
        manifest[f"edit_{path.name}"] = {"input": path.name, "style": "lego_00.png", "prompt": "p", "seed": 0,
                                         "edit": f"edit_{path.name}", "model": None}
    write_manifest(edits, manifest)
    config.inputimg_dir, config.styleimg_dir = str(inputs), str(styles)
    config.sample_savedir, config.eval_savedir = str(tmp_path / "edits"), str(tmp_path / "eval")
    config.device, config.batch_size, config.metrics, config.whole_frame = "cpu", 2, "l2_out", True
    return config


def outputs(config) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(config.eval_savedir).iterdir()}


def test_an_evaluation_stopped_by_sigint_writes_nothing(l2_config, monkeypatch):
    evaluate(l2_config)
    before = outputs(l2_config)
    l2_config.batch_size = 1  # other settings: it would be written beside the first
    signal_at_call(monkeypatch, evaluator, "make_batch", 1, signal.SIGINT)
    with pytest.raises(Stopped) as raised:
        evaluate(l2_config)
    assert raised.value.status == 128 + signal.SIGINT
    assert str(raised.value) == (f"stopped by SIGINT after 1 of 4 batches; nothing was written to "
                                 f"{l2_config.eval_savedir}. Evaluate with: {command_with({})}")
    assert outputs(l2_config) == before


@needs_dev_full
def test_an_evaluation_on_a_full_disk_keeps_the_earlier_one_and_leaves_no_temporary_file(l2_config, monkeypatch):
    """The CSV's temporary file is /dev/full: its write fails with ENOSPC."""
    evaluate(l2_config)
    before = outputs(l2_config)
    stem = report.evaluation_stem

    def stem_on_a_full_disk(out_dir, name, settings, suffixes):
        chosen = stem(out_dir, name, settings, suffixes)
        os.symlink("/dev/full", out_dir / f"{chosen}_per_image.csv.tmp")
        return chosen

    monkeypatch.setattr(report, "evaluation_stem", stem_on_a_full_disk)
    with pytest.raises(writing.WriteFailedError) as raised:
        evaluate(l2_config)
    message = str(raised.value)
    assert message.startswith(f"could not write evaluation to {l2_config.eval_savedir}: no space left on its disk. "
                              f"It needs about ")
    assert message.endswith(f"Earlier evaluations are intact. Free some space, then run: {command_with({})}")
    assert outputs(l2_config) == before


@pytest.mark.slow
def test_an_evaluation_killed_between_its_renames_is_replaced_by_the_rerun(l2_config):
    """evaluate.py is killed (SIGKILL) once its CSV and report are renamed into place, before its
    JSON: without the JSON the set is incomplete, and the same command replaces it (no .2 copy)."""
    command = ["scripts/evaluate.py", f"--config={REPO / 'config' / 'eval.py'}"] + [
        f"--config.{key}={l2_config[key]}" for key in ("inputimg_dir", "styleimg_dir", "sample_savedir",
                                                        "eval_savedir", "device", "metrics", "whole_frame")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "tests/signal_worker.py", "SIGKILL@renamed:car_lego_report.png",
                             *command], cwd=REPO, capture_output=True, text=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(outputs(l2_config)) == ["car_lego.json.tmp", "car_lego_per_image.csv", "car_lego_report.png"]
    again = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(outputs(l2_config)) == ["car_lego.json", "car_lego_per_image.csv", "car_lego_report.png"]
    summary = json.loads((Path(l2_config.eval_savedir) / "car_lego.json").read_text())
    assert summary["files"] == sorted(outputs(l2_config)) and summary["edits_scored"] == 4
