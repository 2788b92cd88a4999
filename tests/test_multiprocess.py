"""Two CPU processes through accelerate: DDP stays in sync; a NaN on one process, or a ratio that
overflows fp32 on the other (the original's skip rule), skips the micro-step everywhere."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from editspecialists.training.tracking import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]


def launch(args, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run([accelerate, *LAUNCH[1:], *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("nan_call", [-1, 2])
def test_two_processes_keep_identical_weights(tiny_ip2p_path, tmp_path, nan_call):
    output = launch([os.path.join(REPO, "tests", "train_worker.py"), str(tiny_ip2p_path), str(tmp_path),
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
