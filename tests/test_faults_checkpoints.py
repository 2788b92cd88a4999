"""Issue 15: checkpoints and run folders under real faults (SIGKILL, flipped and cut bytes, a
full disk). Each test asserts what the user sees and that nothing earlier is lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editspecialists.command_line import raised_by_us
from editspecialists.training import checkpoint as ckpt
from editspecialists.training import run_folder
from editspecialists.training.tracking import METRICS_FILE, read_metrics
from editspecialists.training.trainer import Trainer
from tests.helpers import tiny_brightness_config
from tests.kill_worker import three_epoch_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full_run(tiny_ip2p_path, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (checkpoints 1, 2, 3); tests copy it before damaging it."""
    return Trainer(three_epoch_config(tiny_ip2p_path, tmp_path_factory.mktemp("full"))).run()


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / run.name
    shutil.copytree(run, copy)
    return copy


def flip_bytes(path: Path, offset_from_end: int = 64) -> None:
    """Invert 8 bytes near the end of ``path`` (tensor data, past the safetensors header)."""
    data = bytearray(path.read_bytes())
    start = len(data) - offset_from_end
    data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
    path.write_bytes(bytes(data))


def checkpoint_of(run: Path, epoch: int) -> Path:
    return run / ckpt.CHECKPOINTS / ckpt.checkpoint_name(epoch)


# ------------------------------------------------------------------------------ a killed run
@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_save", "mid_save"])
def test_a_killed_run_continues_its_folder_with_one_set_of_rows_per_epoch(tiny_ip2p_path, tmp_path, full_run,
                                                                          point):
    result = subprocess.run([sys.executable, str(REPO / "tests" / "kill_worker.py"), str(tiny_ip2p_path),
                             str(tmp_path), point, "2"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    run = tmp_path / "logs" / "run"
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["checkpoint_0001"]
    assert {r["epoch"] for r in read_metrics(run)} == {0, 1}, "the killed epoch left its rows"
    assert checkpoint_of(run, 2).with_name("checkpoint_0002.tmp").exists() == (point == "mid_save")
    first_config = (run / "config.json").read_text()

    resumed = Trainer(three_epoch_config(tiny_ip2p_path, tmp_path, run_name="", load_checkpoint=str(run)))
    assert resumed.run_dir == run and resumed.first_epoch == 1
    resumed.run()

    assert read_metrics(run) == read_metrics(full_run), "each epoch once, as in the uninterrupted run"
    assert (run / "config.json").read_text() == first_config
    assert json.loads((run / "config_resume_0001.json").read_text())["load_checkpoint"] == str(run)
    resumes = [json.loads(line) for line in (run / run_folder.RESUMES).read_text().splitlines()]
    assert [(r["epoch"], Path(r["checkpoint"]).name) for r in resumes] == [(1, "checkpoint_0001")]
    assert [c.name for c in ckpt.list_checkpoints(run)] == [f"checkpoint_000{i}" for i in (1, 2, 3)]
    assert not list((run / ckpt.CHECKPOINTS).glob("*.tmp"))
    final, expected = (load_file(str(checkpoint_of(r, 3) / ckpt.WEIGHTS)) for r in (run, full_run))
    assert all(torch.equal(final[key], expected[key]) for key in expected)


# ------------------------------------------------------------------------------ damaged checkpoints
@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (flip_bytes, "has changed since it was saved"),
    (lambda path: path.write_bytes(path.read_bytes()[:-100]), "has .* bytes, .* were saved"),
])
def test_a_damaged_checkpoint_is_named_and_a_run_folder_falls_back(tiny_ip2p_path, tmp_path, full_run, caplog,
                                                                    damage, message):
    run = copy_run(full_run, tmp_path)
    weights = checkpoint_of(run, 3) / ckpt.WEIGHTS
    damage(weights)

    with pytest.raises(ckpt.CheckpointError, match=f"{weights}.* {message}"):
        ckpt.resolve_checkpoint(checkpoint_of(run, 3))
    trainer = Trainer(three_epoch_config(tiny_ip2p_path, tmp_path, run_name="", num_epochs=4,
                                         load_checkpoint=str(run)))
    assert trainer.checkpoint == checkpoint_of(run, 2) and trainer.first_epoch == 2
    assert any("skipping checkpoint_0003" in r.getMessage() and str(weights) in r.getMessage()
               for r in caplog.records)
    policy = trainer.unwrapped_policy
    with pytest.raises(ckpt.CheckpointError, match=f"{weights}.* {message}"):
        ckpt.load_weights(policy, checkpoint_of(run, 3), ckpt.architecture_of(trainer.config))


@pytest.mark.slow
def test_damaged_training_state_keeps_the_weights_usable_for_editing_only(full_run, tmp_path, caplog):
    run = copy_run(full_run, tmp_path)
    optimizer = next((checkpoint_of(run, 3) / ckpt.ACCELERATE_STATE).glob("optimizer*"))
    flip_bytes(optimizer)
    assert ckpt.resolve_checkpoint(run) == checkpoint_of(run, 3)
    assert ckpt.resolve_checkpoint(run, with_state=True) == checkpoint_of(run, 2)
    assert any(str(optimizer) in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_every_checkpoint_file_is_hashed_and_no_checkpoint_verifies_when_all_are_damaged(full_run, tmp_path):
    run = copy_run(full_run, tmp_path)
    recorded = ckpt.recorded_hashes(checkpoint_of(run, 1))
    files = {p.relative_to(checkpoint_of(run, 1)).as_posix() for p in checkpoint_of(run, 1).rglob("*")
             if p.is_file() and p.name != ckpt.HASHES}
    assert set(recorded) == files and {ckpt.WEIGHTS, ckpt.TRAINER_STATE} <= files
    assert ckpt.weights_sha256(checkpoint_of(run, 1)) == recorded[ckpt.WEIGHTS]["sha256"]
    for epoch in (1, 2, 3):
        (checkpoint_of(run, epoch) / ckpt.TRAINER_STATE).write_text('{"epoch": 99, "global_step": 0}')
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint of .* verifies: .*trainer.json"):
        ckpt.resolve_checkpoint(run)


# ------------------------------------------------------------------------------ a full disk
def fill_the_disk_at(monkeypatch, epoch: int) -> None:
    """Make the optimizer state file of checkpoint ``epoch`` a link to /dev/full: torch's own write
    call then fails with ENOSPC, as on a full disk."""
    original = ckpt.temporary_folder

    def temporary_folder(folder):
        tmp = original(folder)
        if folder.name == ckpt.checkpoint_name(epoch):
            (tmp / ckpt.ACCELERATE_STATE).mkdir()
            os.symlink("/dev/full", tmp / ckpt.ACCELERATE_STATE / "optimizer.bin")
        return tmp

    monkeypatch.setattr(ckpt, "temporary_folder", temporary_folder)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fail a write with ENOSPC")
@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_the_space_needed_and_free(tiny_ip2p_path, tmp_path, monkeypatch):
    fill_the_disk_at(monkeypatch, 2)
    trainer = Trainer(tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=3,
                                             save_freq=1))
    with pytest.raises(ckpt.CheckpointSaveError) as raised:
        trainer.run()
    run, message = trainer.run_dir, str(raised.value)
    size = ckpt.folder_bytes(checkpoint_of(run, 1))
    assert f"could not save checkpoint {checkpoint_of(run, 2)}" in message
    assert f"a checkpoint takes {size / 1e6:,.1f} MB" in message and "MB free on its disk" in message
    assert "unexpected pos" in message and f"--config.load_checkpoint={run}" in message
    assert raised_by_us(raised.value), "the scripts print it as one line and exit 1"
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["checkpoint_0001"]
    assert not list((run / ckpt.CHECKPOINTS).glob("*.tmp")), "the partial folder is removed"
    ckpt.verify_checkpoint(checkpoint_of(run, 1), with_state=True)
    assert {r["epoch"] for r in read_metrics(run)} == {0, 1}, "the run stopped at the failed save"


def test_saving_is_refused_before_writing_when_less_space_is_free_than_a_checkpoint_takes(tmp_path):
    folder = tmp_path / "run" / ckpt.CHECKPOINTS / ckpt.checkpoint_name(2)
    folder.parent.mkdir(parents=True)
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ckpt.CheckpointSaveError, match="not enough free space to start writing it"):
        ckpt.check_free_space(folder, free * 2)
    ckpt.check_free_space(folder, None)
    ckpt.check_free_space(folder, 1)
    assert not folder.exists()


# ------------------------------------------------------------------------------ run folders
def fake_run(run: Path, epochs: int) -> None:
    """A run folder with config.json, checkpoints 1..epochs (hashed) and metrics rows of epochs 0..epochs."""
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"first": true}')
    for epoch in range(1, epochs + 1):
        folder = checkpoint_of(run, epoch)
        folder.mkdir(parents=True)
        (folder / ckpt.WEIGHTS).write_bytes(b"weights")
        (folder / ckpt.TRAINER_STATE).write_text(json.dumps({"epoch": epoch, "global_step": epoch}))
        ckpt.record_hashes(folder)
    rows = [{"epoch": e, "score_mean": e} for e in range(epochs + 1)]
    (run / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 9, "cut')


def run_config(logdir: Path, run_name: str):
    import ml_collections

    return ml_collections.ConfigDict({"logdir": str(logdir), "run_name": run_name})


def test_a_new_run_never_writes_into_a_folder_that_holds_a_run(tmp_path):
    fake_run(tmp_path / "run", 1)
    with pytest.raises(ValueError, match=f"{tmp_path / 'run'} already holds a run: resume it with "
                                         f"--config.load_checkpoint="):
        run_folder.choose_run_dir(run_config(tmp_path, "run"), None)
    assert (tmp_path / "run" / "config.json").read_text() == '{"first": true}'
    assert run_folder.choose_run_dir(run_config(tmp_path, "other"), None) == tmp_path / "other"


def test_continuing_from_an_older_checkpoint_would_replace_newer_ones_and_is_refused(tmp_path):
    run = tmp_path / "run"
    fake_run(run, 3)
    with pytest.raises(ValueError, match="has checkpoints newer than checkpoint_0001 "
                                         r"\(checkpoint_0002, checkpoint_0003\)"):
        run_folder.choose_run_dir(run_config(tmp_path, ""), checkpoint_of(run, 1))
    flip_bytes(checkpoint_of(run, 3) / ckpt.WEIGHTS, offset_from_end=4)
    (checkpoint_of(run, 2) / ckpt.TRAINER_STATE).write_text("{}")
    assert run_folder.choose_run_dir(run_config(tmp_path, ""), checkpoint_of(run, 1)) == run, \
        "damaged newer checkpoints are replaced"
    assert run_folder.choose_run_dir(run_config(tmp_path, "run"), checkpoint_of(run, 3)) == run


def test_a_resume_into_another_folder_branches_and_names_its_parent(tmp_path):
    parent = tmp_path / "run"
    fake_run(parent, 2)
    branch = run_folder.choose_run_dir(run_config(tmp_path, "branch"), checkpoint_of(parent, 1))
    run_folder.start_run_folder(branch, '{"resumed": true}', checkpoint_of(parent, 1), first_epoch=1)
    assert branch == tmp_path / "branch"
    assert (branch / "config.json").read_text() == '{"resumed": true}'
    assert read_metrics(branch) == [{"epoch": 0, "score_mean": 0}]
    assert len((parent / METRICS_FILE).read_text().splitlines()) == 4, "the parent is left as it was"
    (resume,) = [json.loads(line) for line in (branch / run_folder.RESUMES).read_text().splitlines()]
    assert resume["checkpoint"] == str(checkpoint_of(parent, 1)) and resume["config"] == "config.json"


def test_continuing_keeps_the_first_config_and_drops_the_rows_to_redo(tmp_path):
    run = tmp_path / "run"
    fake_run(run, 2)
    run_folder.start_run_folder(run, '{"resumed": true}', checkpoint_of(run, 2), first_epoch=2)
    assert (run / "config.json").read_text() == '{"first": true}'
    assert (run / "config_resume_0002.json").read_text() == '{"resumed": true}'
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1], "epoch 2's rows and the cut row are dropped"


def test_runs_started_within_one_second_get_their_own_folders(tmp_path):
    first = run_folder.choose_run_dir(run_config(tmp_path, ""), None)
    first.mkdir()
    second = run_folder.choose_run_dir(run_config(tmp_path, ""), None)
    assert second != first and not second.exists() and second.parent == tmp_path
