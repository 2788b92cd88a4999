"""Run by test_faults_checkpoints.py: a tiny training run killed with SIGKILL at a chosen point.

Usage: kill_worker.py <tiny model> <work dir> <point> <epoch>. The run trains 3 epochs with a
checkpoint after each and kills itself when it reaches ``point`` for checkpoint ``epoch``:
``before_save`` (the epoch's metrics are written, its checkpoint is not) or ``mid_save`` (the
weights and state of the checkpoint are in its temporary folder, not yet hashed nor renamed).
"""

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editspecialists.formats import checkpoint as ckpt  # noqa: E402
from editspecialists.training import trainer as trainer_module  # noqa: E402
from tests.helpers import tiny_brightness_config  # noqa: E402


def kill_at(point: str, epoch: int) -> None:
    name = ckpt.checkpoint_name(epoch)
    if point == "before_save":
        original = trainer_module.Trainer.save_checkpoint

        def save_checkpoint(self, next_epoch):
            if next_epoch == epoch:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, next_epoch)

        trainer_module.Trainer.save_checkpoint = save_checkpoint
    else:
        original_record = ckpt.record_hashes

        def record_hashes(folder):
            if folder.name == name + ".tmp":
                os.kill(os.getpid(), signal.SIGKILL)
            return original_record(folder)

        ckpt.record_hashes = record_hashes


def three_epoch_config(model, work: Path, **overrides):
    """3 epochs of the tiny brightness run, a checkpoint after each, all kept."""
    settings = {"num_epochs": 3, "save_freq": 1, "num_checkpoint_limit": 0, **overrides}
    return tiny_brightness_config(model, work / "data", work / "logs", **settings)


def main():
    model, work, point, epoch = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    kill_at(point, epoch)
    trainer_module.Trainer(three_epoch_config(model, work)).run()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
