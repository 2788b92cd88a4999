"""Issue 15: checkpoints and run folders under real faults (SIGKILL, flipped and cut bytes, a
full disk). Each test asserts what the user sees and that nothing earlier is lost."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from editspecialists import writing
from editspecialists.command_line import command_with, raised_by_us
from editspecialists.formats import checkpoint as ckpt
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

    resumed = Trainer(three_epoch_config(tiny_ip2p_path, tmp_path, run_name="", load_checkpoint=str(run))).load()
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
                                         load_checkpoint=str(run))).load()
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
    original = writing.temporary_folder

    def temporary_folder(folder):
        tmp = original(folder)
        if folder.name == ckpt.checkpoint_name(epoch):
            (tmp / ckpt.ACCELERATE_STATE).mkdir()
            os.symlink("/dev/full", tmp / ckpt.ACCELERATE_STATE / "optimizer.bin")
        return tmp

    monkeypatch.setattr(writing, "temporary_folder", temporary_folder)


def assert_failed_save_message(message: str, folder: Path, reason: str) -> None:
    """One message: the folder, why, the space needed and free, and a command that goes on."""
    assert message.startswith(f"could not write checkpoint {folder}: {reason}. It needs about ")
    assert "MB free on its disk. " in message and message.count("could not write") == 1
    assert "Free some space, then run: " in message


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fail a write with ENOSPC")
@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_the_space_needed_and_free(tiny_ip2p_path, tmp_path, monkeypatch):
    fill_the_disk_at(monkeypatch, 2)
    trainer = Trainer(tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=3,
                                             save_freq=1)).load()
    with pytest.raises(writing.WriteFailedError) as raised:
        trainer.run()
    run, message = trainer.run_dir, str(raised.value)
    assert_failed_save_message(message, checkpoint_of(run, 2),
                               "torch's writer stopped part-way, as it does when the disk is full")
    assert f"It needs about {trainer.checkpoint_bytes() / 1e6:,.1f} MB" in message
    assert message.endswith(f"Earlier checkpoints are intact. Free some space, then run: "
                            f"{command_with({'load_checkpoint': str(run)})}")
    assert raised_by_us(raised.value), "the scripts print it as one line and exit 1"
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["checkpoint_0001"]
    assert not list((run / ckpt.CHECKPOINTS).glob("*.tmp")), "the partial folder is removed"
    ckpt.verify_checkpoint(checkpoint_of(run, 1), with_state=True)
    assert {r["epoch"] for r in read_metrics(run)} == {0, 1}, "the run stopped at the failed save"


NO_SPACE = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.mark.slow
def test_a_full_disk_at_the_first_checkpoint_is_one_message_and_the_same_command_starts_again(
        tiny_ip2p_path, tmp_path, monkeypatch, caplog):
    """safetensors' own writer fails as it does on a full disk (its message, measured on a full
    tmpfs); the run has no checkpoint to protect, so the same config, run_name included, starts it
    again in its folder."""
    import safetensors.torch

    def serialize_file(*args, **kwargs):
        raise SafetensorError(NO_SPACE)

    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=1)
    with monkeypatch.context() as patched:
        patched.setattr(safetensors.torch, "serialize_file", serialize_file)
        trainer = Trainer(config).load()
        with pytest.raises(writing.WriteFailedError) as raised:
            trainer.run()
    run, message = trainer.run_dir, str(raised.value)
    assert_failed_save_message(message, checkpoint_of(run, 1), "no space left on its disk")
    assert message.endswith(f"Free some space, then run: {command_with({})}"), "no checkpoint: the same command"
    assert "Earlier checkpoints" not in message and NO_SPACE not in message
    assert sorted(p.name for p in (run / ckpt.CHECKPOINTS).iterdir()) == [], "the partial folder is removed"

    again = Trainer(config).load()
    assert again.run_dir == run
    assert any(f"{run} holds a run that stopped before its first checkpoint" in r.getMessage() for r in caplog.records)
    again.run()
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["checkpoint_0001"]
    assert {r["epoch"] for r in read_metrics(run)} == {0}, "the failed run's rows are gone"


def fill_leaving(folder: Path, free: int) -> Path:
    """A file on ``folder``'s file system that leaves about ``free`` bytes free."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, writing.free_bytes(folder) - free))
    return filler


@pytest.fixture
def small_file_system(tmp_path):
    """A 4 MB tmpfs mounted for the test (root only)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_real_full_file_system_at_a_checkpoint_loses_nothing(tiny_ip2p_path, tmp_path, small_file_system,
                                                               monkeypatch):
    """The run writes to a tmpfs that fills up as the second checkpoint is written: the disk is
    left with just more than the checkpoint's tensors (the free-space check passes), and the
    libraries' own writes fail on the real file system. Then space is freed and the run resumed."""
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", small_file_system / "logs", num_epochs=2)
    original = writing.check_free_space
    fillers = []

    def check_then_fill(target, what, needed, advice):
        original(target, what, needed, advice)
        if target.name == ckpt.checkpoint_name(2):
            fillers.append(fill_leaving(small_file_system, needed + 8192))

    monkeypatch.setattr(writing, "check_free_space", check_then_fill)
    trainer = Trainer(config).load()
    with pytest.raises(writing.WriteFailedError) as raised:
        trainer.run()
    run = trainer.run_dir
    assert_failed_save_message(str(raised.value), checkpoint_of(run, 2), "no space left on its disk")
    assert sorted(p.name for p in (run / ckpt.CHECKPOINTS).iterdir()) == ["checkpoint_0001"]
    ckpt.verify_checkpoint(checkpoint_of(run, 1), with_state=True)

    fillers[0].unlink()
    monkeypatch.setattr(writing, "check_free_space", original)
    resumed = Trainer(tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", small_file_system / "logs",
                                             num_epochs=2, load_checkpoint=str(run))).load()
    resumed.run()
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["checkpoint_0001", "checkpoint_0002"]


def test_saving_is_refused_before_writing_when_less_space_is_free_than_a_checkpoint_takes(tmp_path):
    folder = tmp_path / "run" / ckpt.CHECKPOINTS / ckpt.checkpoint_name(2)
    folder.parent.mkdir(parents=True)
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(writing.WriteFailedError, match="not enough free space to start writing it"):
        writing.check_free_space(folder, "checkpoint", free * 2, "")
    writing.check_free_space(folder, "checkpoint", None, "")
    writing.check_free_space(folder, "checkpoint", 1, "")
    assert not folder.exists()


# ------------------------------------------------------------------------------ content hashes
def reorder_header(path):
    """Rewrite a safetensors file with its JSON header's entries in reverse order, indented (the
    writer itself orders them, whatever the order it is given), the tensor bytes as they were."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    text = json.dumps(dict(reversed(list(header.items()))), indent=1).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size:])


def test_a_weights_file_with_its_header_reordered_verifies_and_changed_values_do_not(tmp_path):
    """The hash covers the tensors (names, dtypes, shapes, bytes) and the metadata, not the
    layout of the file: the same content rewritten in another order is the same checkpoint."""
    from safetensors.torch import save_file

    checkpoint = tmp_path / "checkpoint_0001"
    checkpoint.mkdir()
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.float16)}
    ckpt.save_weights(checkpoint / ckpt.WEIGHTS, tensors, {"use_lora": "True", "lora_rank": "8"})
    (checkpoint / ckpt.TRAINER_STATE).write_text('{"epoch": 1, "global_step": 2}')
    ckpt.record_hashes(checkpoint)
    weights = checkpoint / ckpt.WEIGHTS
    before = weights.read_bytes()

    reorder_header(weights)
    assert weights.read_bytes() != before
    ckpt.verify_checkpoint(checkpoint)

    metadata = {"lora_rank": "8", "use_lora": "True", "format": "editspecialists-1"}

    save_file({"a": tensors["a"], "b": tensors["b"] + 1}, str(weights), metadata=metadata)
    with pytest.raises(ckpt.CheckpointError, match=f"{weights} has changed since it was saved"):
        ckpt.verify_checkpoint(checkpoint)
    save_file({"a": tensors["a"], "b": tensors["b"]}, str(weights), metadata={**metadata, "lora_rank": "4"})
    with pytest.raises(ckpt.CheckpointError, match="SHA-256 of its tensors differs"):
        ckpt.verify_checkpoint(checkpoint)
    weights.write_bytes(before[:-10])
    with pytest.raises(ckpt.CheckpointError, match=f"{weights} has {len(before) - 10} bytes, {len(before)} were"):
        ckpt.verify_checkpoint(checkpoint)


# ------------------------------------------------------------------------------ a refused resume
@pytest.mark.slow
def test_a_resume_refused_for_a_forged_state_leaves_no_record_and_runs_nothing(tiny_ip2p_path, tmp_path, full_run):
    """The optimizer state is replaced by a pickle that would run code, and hashes.json forged to
    match: torch refuses to unpickle it, the error is one line naming the file, and the run folder
    gets no resume record, no resume config and no changed metrics."""
    run = copy_run(full_run, tmp_path)
    marker = tmp_path / "executed"
    checkpoint = checkpoint_of(run, 3)
    (checkpoint / ckpt.ACCELERATE_STATE / "optimizer.bin").write_bytes(pickle.dumps(RunsCode(str(marker)), protocol=2))
    ckpt.record_hashes(checkpoint)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    with pytest.raises(ckpt.CheckpointError) as raised:
        Trainer(three_epoch_config(tiny_ip2p_path, tmp_path, run_name="", num_epochs=4, load_checkpoint=str(run))).load()
    assert str(raised.value).startswith(f"{checkpoint / ckpt.ACCELERATE_STATE} cannot be loaded: UnpicklingError")
    assert "\n" not in str(raised.value) and raised_by_us(raised.value)
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


class RunsCode:
    """Unpickling it would create ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------ run folders
def fake_run(run: Path, epochs: int) -> None:
    """A run folder with config.json, checkpoints 1..epochs (hashed) and metrics rows of epochs 0..epochs."""
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"first": true}')
    for epoch in range(1, epochs + 1):
        folder = checkpoint_of(run, epoch)
        folder.mkdir(parents=True)
        ckpt.save_weights(folder / ckpt.WEIGHTS, {"w": torch.zeros(1)}, {})
        (folder / ckpt.TRAINER_STATE).write_text(json.dumps({"epoch": epoch, "global_step": epoch}))
        ckpt.record_hashes(folder)
    rows = [{"epoch": e, "score_mean": e} for e in range(epochs + 1)]
    (run / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 9, "cut')


def run_config(logdir: Path, run_name: str):
    import ml_collections

    return ml_collections.ConfigDict({"logdir": str(logdir), "run_name": run_name})


def test_a_new_run_never_writes_into_a_folder_that_holds_a_run_with_checkpoints(tmp_path):
    fake_run(tmp_path / "run", 1)
    resume = command_with({"load_checkpoint": str(tmp_path / "run")})
    with pytest.raises(ValueError) as raised:
        run_folder.choose_run_dir(run_config(tmp_path, "run"), None)
    assert str(raised.value) == (f"{tmp_path / 'run'} already holds a run with checkpoints: resume it ({resume}), "
                                 f"or choose another run_name")
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
