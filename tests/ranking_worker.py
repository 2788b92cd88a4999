"""Launched by test_ranking.py under ``accelerate launch`` with 2 CPU processes.

Usage: ranking_worker.py <work dir>. Each process holds one input of each of 2 sampling batches
(the rows of ``TWO_BATCHES``: process p's batch k is row 2k + p), ranks them through the
trainer's gather (:func:`rank_gathered`) with ``reward.standardize`` "batch" and "epoch", and at
random (``reward.ranking = "random"``, the generator seeded alike on both), and writes the
gathered orders to order<process>.json.
"""

import json
import sys
from pathlib import Path

import ml_collections
import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editspecialists.launch import end_process_group  # noqa: E402
from editspecialists.rewards import register_score  # noqa: E402
from editspecialists.training.trainer import RANKING, derived_generator, rank_gathered  # noqa: E402
from tests.helpers import TWO_BATCHES  # noqa: E402


def main():
    work = Path(sys.argv[1])
    for name in TWO_BATCHES:
        register_score(name, lower_is_better=True)(lambda config, device: None)
    accelerator = Accelerator(cpu=True)
    process = accelerator.process_index
    local = {name: table[[process, 2 + process]] for name, table in TWO_BATCHES.items()}
    orders = {}
    for mode in ("batch", "epoch"):
        reward = ml_collections.ConfigDict({"weights": {name: 1.0 for name in TWO_BATCHES}, "standardize": mode,
                                            "ranking": "scores"})
        _, order, _ = rank_gathered(accelerator, local, [1, 1], reward)
        orders[mode] = order.tolist()
    reward.ranking = "random"
    _, order, _ = rank_gathered(accelerator, local, [1, 1], reward, derived_generator(7, RANKING, 0))
    orders["random"] = order.tolist()
    (work / f"order{process}.json").write_text(json.dumps(orders))
    end_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
