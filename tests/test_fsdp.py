"""The sharded setting (config/accelerate_fsdp.yaml): the Kontext policy wrapped by FSDP2 as that
file has accelerate wrap it computes what the whole policy computes (two CPU processes, gloo), and
in bf16 (accelerate's mixed-precision policy) recomputes the log-probabilities it sampled.

accelerate itself runs FSDP on GPUs only (on a CPU it launches plain data parallelism), so this
checks our side of it: sampling, the policy's and the frozen reference's log-probabilities
(the reference swaps the input layer and switches the LoRA off inside the wrapped module), the
step-invariant inputs computed through the wrapper, the gradients, and the whole trainable state
gathered for the checkpoint."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import free_port, run_process_group

REPO = Path(__file__).resolve().parents[1]


def test_the_policy_sharded_as_the_fsdp_config_says_computes_what_the_whole_policy_computes(tiny_kontext_path,
                                                                                           tmp_path):
    out = tmp_path / "fsdp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = run_process_group([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                "--master_port", str(free_port()), str(REPO / "tests" / "fsdp_worker.py"),
                                str(tiny_kontext_path), str(REPO / "config" / "accelerate_fsdp.yaml"), str(out)],
                               600, cwd=tmp_path, env=env)
    if "FSDP expects uniform original parameter dtype" in result.stderr:  # torch 2.6 (2.14 takes them)
        pytest.skip(f"torch {torch.__version__}'s FSDP2 refuses frozen bf16 weights beside fp32 trainable ones")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["units"] == 3  # the stand-in's double-stream and single-stream block, and the policy
    assert report["held"] == 0.5, "each of the two processes holds half of every sharded weight"
    assert report["state_equal"], "the checkpoint's trainable weights, gathered whole, are the policy's"
    differences = report["max_difference"]
    assert {"latents", "sampled", "log_prob", "reference", "recomputed_minus_sampled"} <= set(differences)
    # LoRA (8 projections of the double block, 3 of the single one: A and B each), x_embedder, style module
    assert sum(name.startswith("grad/") for name in differences) == 2 * 11 + 2 + 4
    assert max(differences.values()) < 1e-5, {name: value for name, value in differences.items() if value >= 1e-5}
    # accelerate's FSDP2 policy for mixed_precision="bf16" rounds what the policy computes (the
    # trainable weights and the forward inputs, timesteps included, gathered or cast to bf16),
    # but training still recomputes the log-probs that sampling recorded (the first ratio is 1)
    in_bf16 = report["bf16_max_difference"]
    assert in_bf16["recomputed_minus_sampled"] < 1e-5
    assert in_bf16["latents"] < 0.1 and in_bf16["reference"] < 0.01, in_bf16
