"""Issue 26: training runs stopped by real signals (SIGTERM from a scheduler, SIGINT from Ctrl-C)
sent to real processes at chosen points (tests/signal_worker.py): the run finishes the current
optimizer step, saves, prints the command that resumes, and the resumed run equals an
uninterrupted one bit for bit; a second signal stops at once; the processes of a launch agree."""

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editspecialists.formats import checkpoint as ckpt
from editspecialists.training.tracking import read_metrics
from editspecialists.training.within_epoch import samples_file
from tests.helpers import REPO, run_process_group, tiny_brightness_args, two_cpu_processes
from tests.kill_worker import three_epoch_config

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
THREE_EPOCHS = {"num_epochs": 3, "save_freq": 1, "num_checkpoint_limit": 0}


@pytest.fixture(scope="module")
def full_run(tiny_ip2p_path, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (checkpoints 1, 2, 3), the run the stopped ones must equal."""
    from editspecialists.training.trainer import Trainer

    return Trainer(three_epoch_config(tiny_ip2p_path, tmp_path_factory.mktemp("full"))).run()


def train_with_signals(plan: str, args: list[str], launcher: list[str] = (), **env) -> subprocess.CompletedProcess:
    """``python scripts/train.py args`` (under ``launcher`` when given) with the signals of ``plan``."""
    command = [*launcher] or [sys.executable]
    return run_process_group([*command, "tests/signal_worker.py", plan, "scripts/train.py", *args], 900, cwd=REPO,
                             env={**ENV, **env})


def resume_command(stderr: str, message: str) -> str:
    """The command of the one stderr line that is ``message`` followed by it: the last line, or in a
    launch of several processes the line before the note that the launcher's report follows."""
    lines = stderr.strip().splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(message)]
    assert len(found) == 1, stderr[-3000:]
    after = lines[found[0] + 1:]
    assert not after or after[0].endswith("the launcher's report of this failed process follows)"), after[:1]
    return lines[found[0]][len(message):]


def same_weights(first: Path, second: Path) -> bool:
    a, b = (load_file(str(path / ckpt.WEIGHTS)) for path in (first, second))
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("plan, status, where, saved", [
    ("SIGTERM@sampled:1", 143, "in epoch 1 after optimizer step 3", "checkpoint_0001_step_3"),
    ("SIGINT@saving:checkpoint_0002", 130, "before epoch 2", "checkpoint_0002"),
])
def test_a_signalled_run_saves_says_how_to_resume_and_resumes_bit_exactly(tiny_ip2p_path, tmp_path, full_run,
                                                                          plan, status, where, saved):
    """SIGTERM right after epoch 1 is sampled: the run trains to the end of its optimizer step (3)
    and saves the step with the epoch's samples. SIGINT during the save of checkpoint 2: the save
    completes and the run stops before sampling epoch 2. Either way: exit 128 + signal, one line
    naming the checkpoint and the command, which resumes to the uninterrupted run's weights and
    metrics."""
    args = tiny_brightness_args(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", **THREE_EPOCHS)
    stopped = train_with_signals(plan, args)
    run = tmp_path / "logs" / "run"
    checkpoint = run / ckpt.CHECKPOINTS / saved
    assert stopped.returncode == status, stopped.stderr[-3000:]
    name = plan.split("@")[0]
    assert stopped.stderr.count(f"{name} received: finishing the current optimizer step") == 1
    command = resume_command(stopped.stderr, f"stopped by {name} {where}; saved {checkpoint}. Resume with: ")
    assert shlex.split(command) == [sys.executable, "scripts/train.py", *args, f"--config.load_checkpoint={run}"]
    assert ckpt.list_checkpoints(run)[-1] == checkpoint and not list((run / ckpt.CHECKPOINTS).glob("*.tmp"))
    assert ckpt.resolve_checkpoint(run, with_state=True) == checkpoint

    resumed = run_process_group(shlex.split(command), 900, cwd=REPO, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_metrics(run) == read_metrics(full_run)
    final = ckpt.checkpoint_name(3)
    assert same_weights(run / ckpt.CHECKPOINTS / final, full_run / ckpt.CHECKPOINTS / final)


def test_a_second_signal_stops_at_once_and_leaves_no_checkpoint_that_looks_complete(tiny_ip2p_path, tmp_path):
    """The second SIGTERM comes while the first one's checkpoint is written: the process ends by
    the signal; the unfinished checkpoint stays a temporary folder that no resume takes."""
    args = tiny_brightness_args(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", **THREE_EPOCHS)
    stopped = train_with_signals("SIGTERM@step:3,SIGTERM@saving:checkpoint_0001_step_3", args)
    assert stopped.returncode == -signal.SIGTERM, stopped.stderr[-3000:]
    assert "second SIGTERM: stopping at once, without saving" in stopped.stderr
    run = tmp_path / "logs" / "run"
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["checkpoint_0001"]
    assert (run / ckpt.CHECKPOINTS / "checkpoint_0001_step_3.tmp").is_dir()
    assert ckpt.resolve_checkpoint(run, with_state=True) == run / ckpt.CHECKPOINTS / "checkpoint_0001"


def test_the_processes_of_a_launch_agree_on_the_step_and_resume_as_if_uninterrupted(tiny_ip2p_path, tmp_path):
    """Two processes under accelerate launch; only process 1 gets SIGTERM (after optimizer step 3):
    both stop after that step, each saves its samples, and the printed command (the launcher's)
    resumes to the weights and metrics of an uninterrupted two-process run."""
    launch = two_cpu_processes()
    settings = {"num_epochs": 2, "save_freq": 1, "num_checkpoint_limit": 0}
    args = tiny_brightness_args(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", **settings)
    stopped = train_with_signals("SIGTERM@step:3:rank:1", args, launch, ACCELERATE_USE_CPU="1")
    run = tmp_path / "logs" / "run"
    checkpoint = run / ckpt.CHECKPOINTS / "checkpoint_0001_step_3"
    assert stopped.returncode != 0
    command = resume_command(stopped.stderr, f"stopped by SIGTERM in epoch 1 after optimizer step 3; saved "
                                             f"{checkpoint}. Resume with: ")
    assert shlex.split(command)[-1] == f"--config.load_checkpoint={run}"
    assert all((checkpoint / samples_file(i)).is_file() for i in (0, 1))
    assert ckpt.read_trainer_state(checkpoint)["within_epoch"] == {"inner": 0, "start": 2, "num_processes": 2}
    resumed = run_process_group(shlex.split(command), 900, cwd=REPO, env={**ENV, "ACCELERATE_USE_CPU": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    other = tiny_brightness_args(tiny_ip2p_path, tmp_path / "data", tmp_path / "uninterrupted", **settings)
    whole = run_process_group([*launch, "scripts/train.py", *other], 900, cwd=REPO,
                              env={**ENV, "ACCELERATE_USE_CPU": "1"})
    assert whole.returncode == 0, whole.stderr[-3000:]
    uninterrupted = tmp_path / "uninterrupted" / "run"
    assert read_metrics(run) == read_metrics(uninterrupted)
    final = ckpt.checkpoint_name(2)
    assert same_weights(run / ckpt.CHECKPOINTS / final, uninterrupted / ckpt.CHECKPOINTS / final)
