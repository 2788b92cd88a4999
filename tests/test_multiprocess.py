"""Two CPU processes through accelerate: DDP stays in sync; a NaN on one process, or a ratio that
overflows fp32 on the other (the original's skip rule), skips the micro-step everywhere."""

import os

import pytest
import torch
from safetensors.torch import load_file

from editspecialists.training.tracking import read_metrics
from tests.helpers import launch_two_processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("nan_call", [-1, 2])
def test_two_processes_keep_identical_weights(tiny_ip2p_path, tmp_path, nan_call):
    output = launch_two_processes([os.path.join(REPO, "tests", "train_worker.py"), str(tiny_ip2p_path), str(tmp_path),
                     str(nan_call)], tmp_path)
    assert "num_processes = 2" in output
    # 2 processes x 2 batches of 2 inputs; 1 input x 2 accumulation steps per process and step
    assert "sample.num_batches_per_epoch) = 8" in output
    assert "x gradient_accumulation_steps) = 4" in output
    rank0, rank1 = (load_file(str(tmp_path / f"rank{i}.safetensors")) for i in range(2))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    steps = [r for r in read_metrics(tmp_path / "logs" / "run") if "step" in r]
    assert [r["step"] for r in steps] == [1, 2], "8 inputs / effective train batch 4 = 2 optimizer steps"
    # 4 inputs x 2 trained steps = 8 micro-steps per process, 4 per optimizer step; the NaN (call
    # 2, process 1) and the overflowing ratio (call 5, process 0) fall in different windows
    expected = [1, 1] if nan_call >= 0 else [0, 0]
    assert [r["skipped_micro_steps"] for r in steps] == expected
    assert [r["skipped_fraction"] for r in steps] == [n / 4 for n in expected]
    assert all(isinstance(r["loss"], float) for r in steps), "a skipped micro-step never reaches the logged loss"


@pytest.mark.slow
def test_two_processes_train_a_kontext_specialist_in_step(tiny_kontext_path, tmp_path):
    """The Kontext path (flow SDE, the transformer policy) under DDP: both processes end with the
    same weights after the epoch's two optimizer steps, checkpointed."""
    output = launch_two_processes([os.path.join(REPO, "tests", "train_worker.py"), str(tiny_kontext_path),
                                   str(tmp_path), "-1", "kontext"], tmp_path)
    assert "num_processes = 2" in output and "trainable weights identical on all 2 processes" in output
    rank0, rank1 = (load_file(str(tmp_path / f"rank{i}.safetensors")) for i in range(2))
    assert rank0.keys() == rank1.keys() and any(key.startswith("transformer.x_embedder") for key in rank0)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    assert [r["step"] for r in read_metrics(tmp_path / "logs" / "run") if "step" in r] == [1, 2]
    saved = load_file(str(tmp_path / "logs" / "run" / "checkpoints" / "checkpoint_0001" / "weights.safetensors"))
    assert all(torch.equal(saved[key], rank0[key]) for key in rank0)
