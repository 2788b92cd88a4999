"""generate.py under faults: killed with SIGKILL mid-write, edits damaged between runs, unreadable
and oversized inputs.

Run as a module (``python -m tests.test_generation_faults <tmp> <tiny model> <n>``) this file is
the worker the kill test starts: it generates with batch size 3 and kills itself with SIGKILL
while the n-th edit's temporary file is half written.
"""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from editspecialists.data import images
from editspecialists.generation import generate_edits, read_manifest
from tests.helpers import EDITS, REPO, assert_complete, fault_config, oversized_png, truncated_jpeg

def redo_lines(caplog) -> dict[str, str]:
    """{edit file name: reason} of the "redoing" warnings."""
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("redoing ")]
    return {Path(line.split(": ")[0][len("redoing "):]).name: line.split(": ", 1)[1] for line in lines}


def kill_while_writing(tmp_path: Path, tiny_ip2p_path: Path, fatal_save: int) -> None:
    """Generate, and SIGKILL this process once the ``fatal_save``-th edit is half written."""
    config = fault_config(tiny_ip2p_path, tmp_path)
    saves = 0
    save = Image.Image.save

    def save_then_die(image, target, *args, **kwargs):
        nonlocal saves
        save(image, target, *args, **kwargs)
        saves += 1
        if saves == fatal_save:
            data = Path(target).read_bytes()
            Path(target).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    Image.Image.save = save_then_die
    generate_edits(config)


def test_a_generation_killed_mid_write_is_completed_by_the_rerun(tiny_ip2p_path, tmp_path, caplog):
    """Batch size 3, killed while the 5th edit is written: edits 1-3 are listed, the 4th is renamed
    but not listed, the 5th is a half-written temporary file. The rerun keeps 1-3, names and redoes
    the 4th, removes the temporary file and makes the rest."""
    worker = subprocess.run([sys.executable, "-m", "tests.test_generation_faults", str(tmp_path),
                             str(tiny_ip2p_path), "5"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]
    folder = tmp_path / "edits" / "car_lego"
    assert sorted(read_manifest(folder)) == EDITS[:3]
    assert sorted(p.name for p in folder.iterdir()) == sorted(EDITS[:4] + ["edit_car_04.png.tmp", "manifest.jsonl"])
    kept = {name: (folder / name).stat().st_mtime_ns for name in EDITS[:3]}

    with caplog.at_level(logging.INFO, logger="editspecialists.generation"):
        generate_edits(fault_config(tiny_ip2p_path, tmp_path))
    assert redo_lines(caplog) == {"edit_car_03.png": "not listed in manifest.jsonl (left by an interrupted run)"}
    assert any("edit_car_04.png.tmp" in r.getMessage() for r in caplog.records if "removed" in r.getMessage())
    assert_complete(folder)
    assert {name: (folder / name).stat().st_mtime_ns for name in EDITS[:3]} == kept


def test_damaged_or_unlisted_edits_are_redone_each_named_once(tiny_ip2p_path, tmp_path, caplog):
    config = fault_config(tiny_ip2p_path, tmp_path)
    folder = generate_edits(config)
    (folder / "edit_car_01.png").write_bytes(b"")
    (folder / "edit_car_02.png").write_bytes((folder / "edit_car_02.png").read_bytes()[:200])
    (folder / "edit_car_03.png").unlink()
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    (folder / "manifest.jsonl").write_text("".join(line + "\n" for line in lines if "edit_car_04" not in line))
    kept = {name: (folder / name).stat().st_mtime_ns for name in ("edit_car_00.png", "edit_car_05.png")}

    with caplog.at_level(logging.WARNING, logger="editspecialists.generation"):
        generate_edits(config)
    reasons = redo_lines(caplog)
    assert sorted(reasons) == ["edit_car_01.png", "edit_car_02.png", "edit_car_03.png", "edit_car_04.png"]
    assert reasons["edit_car_01.png"].startswith("unreadable (")
    assert reasons["edit_car_02.png"].startswith("unreadable (") and "truncated" in reasons["edit_car_02.png"]
    assert reasons["edit_car_03.png"] == "listed in manifest.jsonl but missing"
    assert reasons["edit_car_04.png"] == "not listed in manifest.jsonl (left by an interrupted run)"
    assert_complete(folder)
    assert {name: (folder / name).stat().st_mtime_ns for name in kept} == kept


def test_unreadable_and_oversized_inputs_are_skipped_with_one_warning(tiny_ip2p_path, tmp_path, caplog):
    config = fault_config(tiny_ip2p_path, tmp_path)
    inputs = Path(config.inputimg_dir)
    (inputs / "notes.png").write_text("a text file named .png")
    truncated_jpeg(inputs / "half.jpg")
    oversized_png(inputs / "huge.png", 20000, 20000)
    (Path(config.styleimg_dir) / "lego_broken.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="editspecialists.data.images"):
        folder = generate_edits(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == images.__name__]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("skipped 3 unreadable input image file(s) in")
    for name, reason in (("half.jpg", "truncated"), ("huge.png", "more than twice the limit of 89478485 pixels"),
                         ("notes.png", "UnidentifiedImageError")):
        assert name in warnings[0] and reason in warnings[0].split(name)[1].split(";")[0], name
    assert "lego_broken.jpg" in warnings[1]
    assert_complete(folder)
    assert "lego_broken.jpg" not in {entry["style"] for entry in read_manifest(folder).values()}


def test_a_folder_without_a_readable_input_is_an_error(tiny_ip2p_path, tmp_path):
    config = fault_config(tiny_ip2p_path, tmp_path)
    for path in Path(config.inputimg_dir).iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"^--config.inputimg_dir: input image folder .* has no readable image \(skipped: car_00.png"):
        generate_edits(config)


if __name__ == "__main__":
    kill_while_writing(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    sys.exit("the worker was not killed")
