"""Launched by test_multiprocess.py under ``accelerate launch`` with 2 CPU processes.

Usage: train_worker.py <tiny model> <work dir> <nan_call> [kontext]. With "kontext" the model is
the tiny Kontext stand-in, trained as a Kontext run. When nan_call >= 0, process 1
returns a NaN log-prob at that call of the policy forward, and process 0 a log-prob 100 above the
reference's (a finite log-ratio whose ratio overflows fp32: the original's skip rule, on by
default) three calls later, to check that both micro-steps are skipped on every process. Each
process writes its final trainable weights to rank<i>.safetensors.
"""

import sys
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editspecialists.training import trainer as trainer_module  # noqa: E402
from tests.helpers import as_tiny_kontext, tiny_brightness_config  # noqa: E402


def inject_faults(nan_call: int):
    """Process 1: a NaN log-prob at policy call ``nan_call``; process 0: +100 at call ``nan_call + 3``."""
    original = trainer_module.transition_log_probs
    calls = {"n": 0}
    faults = {1: (nan_call, lambda log_prob: log_prob * float("nan")),
              0: (nan_call + 3, lambda log_prob: log_prob + 100.0)}

    def poisoned(*args, reference=False, **kwargs):
        log_prob = original(*args, reference=reference, **kwargs)
        if not reference:
            calls["n"] += 1
            call, fault = faults[PartialState().process_index]
            if calls["n"] == call:
                return fault(log_prob)
        return log_prob

    trainer_module.transition_log_probs = poisoned


def main():
    model, work, nan_call = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if nan_call >= 0:
        inject_faults(nan_call)
    config = tiny_brightness_config(model, work / "data", work / "logs", num_epochs=1)
    if sys.argv[4:] == ["kontext"]:
        config = as_tiny_kontext(config)
    trainer = trainer_module.Trainer(config).load()
    trainer.run()
    state = {k: v.detach().cpu().contiguous() for k, v in trainer.unwrapped_policy.trainable_state_dict().items()}
    save_file(state, str(work / f"rank{trainer.accelerator.process_index}.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
