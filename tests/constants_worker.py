"""Run by test_feedback_constants.py, alone or under ``accelerate launch`` with 2 CPU processes.

Usage: constants_worker.py <tiny model> <demo root> <work dir> <label>. Builds the trainer of the
tiny run scored by the default reward (its masks computed up front, shared out among the
processes), scores fixed random edits of the first 4 inputs on every process, and saves each
process's masks and scores to ``<label>_rank<i>.pt``; the run folder is ``<work>/<label>``.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editspecialists.rewards.constants import image_keys  # noqa: E402
from editspecialists.training.trainer import Trainer  # noqa: E402
from tests.helpers import feedback_run_config  # noqa: E402


def main():
    model, demo_root, work, label = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    # each process writes its own copy of the (byte-identical) images: no process reads a file
    # another one is writing
    config = feedback_run_config(model, demo_root, work / f"{label}_data_{os.environ.get('RANK', '0')}", num_epochs=1)
    config.logdir, config.run_name = str(work), label
    trainer = Trainer(config).load()
    dataset = trainer.dataset
    index = torch.arange(4)
    batch = dataset.batch(index, index % len(dataset.style_files), torch.zeros(4, dtype=torch.long))
    edits = torch.rand(4, 2, *batch.inputs.shape[1:], generator=torch.Generator().manual_seed(0))
    scores = trainer.scorer(edits, batch.inputs, batch.styles, image_keys("input", batch.input_files, batch.inputs),
                            image_keys("style", batch.style_files, batch.styles))
    masks = {f"{kind[1]}:{key[1]}": values[0].cpu() for (kind, key), values in trainer.scorer.constants.values.items()
             if kind[0] == "mask"}
    torch.save({"masks": masks, "scores": {name: value.cpu() for name, value in scores.items()}},
               work / f"{label}_rank{trainer.accelerator.process_index}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
