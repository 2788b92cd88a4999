"""Issue 17: per-image constants computed once per run, and the masks shown to the user."""

import json
import sys
from pathlib import Path

import pytest
import torch

from editspecialists.rewards.constants import PerImageConstants, image_keys
from editspecialists.rewards.masks import MaskPredictor
from editspecialists.training.mask_preview import MASKS_FILE, MASKS_FOLDER
from editspecialists.training.tracking import read_metrics
from editspecialists.training.trainer import Trainer
from tests.helpers import cpu_worker_env, feedback_run_config, launch_two_processes, run_process_group

REPO = Path(__file__).resolve().parents[1]
SCORE_KEYS = ("structural_mean", "structural_std", "semantic_mean", "semantic_std")


def test_a_constant_is_computed_once_per_distinct_image_and_kept_in_key_order():
    constants, calls = PerImageConstants(), []

    def compute(images):
        calls.append(images[:, 0, 0, 0].tolist())
        return images.sum(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3))

    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    keys = image_keys("input", ["a.png", "b.png", "a.png", "c.png"], images[[0, 1, 0, 3]])
    sums, means = constants.lookup(("kind",), keys, images[[0, 1, 0, 3]], compute)
    assert calls == [[0.0, 1.0, 3.0]], "one call, each distinct key once"
    assert sums.tolist() == [0.0, 12.0, 0.0, 36.0] and means.tolist() == [0.0, 1.0, 0.0, 3.0]
    again, _ = constants.lookup(("kind",), keys[::-1], images[[3, 0, 1, 0]], compute)
    assert len(calls) == 1 and again.tolist() == [36.0, 0.0, 12.0, 0.0]
    constants.lookup(("other kind",), keys[:1], images[:1], compute)
    assert len(calls) == 2 and constants.computed == {("kind",): 3, ("other kind",): 1}
    larger = image_keys("input", ["a.png"], torch.zeros(1, 3, 4, 4))
    assert larger != keys[:1], "another preprocessing size is another key"


@pytest.mark.slow
def test_scores_with_constants_equal_scores_without_over_two_epochs(tiny_ip2p_path, demo_assets_root, tmp_path):
    runs = {}
    for constants, offload in ((True, False), (False, False), (True, True)):
        config = feedback_run_config(tiny_ip2p_path, demo_assets_root, tmp_path / f"{constants}{offload}", num_epochs=2,
                                 **{"reward.per_image_constants": constants, "reward.offload": offload})
        runs[constants, offload] = [r for r in read_metrics(Trainer(config).run()) if "structural_mean" in r]
    assert [r["epoch"] for r in runs[True, False]] == [0, 1]
    assert runs[True, True] == runs[True, False], "scoring after sampling (offload) changes no number"
    for cached, recomputed in zip(runs[True, False], runs[False, False]):
        for key in SCORE_KEYS:
            # masks are computed up front one image at a time, without constants per sampling batch:
            # batched convolutions round differently (float32), hence the tolerance
            assert cached[key] == pytest.approx(recomputed[key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_detector_and_segmenter_see_each_image_once_per_run_and_masks_are_shown(
        tiny_ip2p_path, demo_assets_root, tmp_path, monkeypatch, capsys):
    seen = {"detect": [], "segment": []}
    for method in seen:
        original = getattr(MaskPredictor, method)

        def counting(self, images, *args, method=method, original=original):
            seen[method].extend(image.cpu().numpy().tobytes() for image in images)
            return original(self, images, *args)

        monkeypatch.setattr(MaskPredictor, method, counting)
    # a threshold no box reaches: every image falls back, as with a name the images do not show
    config = feedback_run_config(tiny_ip2p_path, demo_assets_root, tmp_path, num_epochs=3,
                             **{"reward.box_threshold": 1.0})
    trainer = Trainer(config).load()
    start_line = capsys.readouterr().err
    run = trainer.run()

    assert len(seen["detect"]) == 8 + 5 and len(set(seen["detect"])) == 8 + 5, "each image once over 3 epochs"
    assert len(seen["segment"]) == 8 + 5 and len(set(seen["segment"])) == 8 + 5
    records = [json.loads(line) for line in (run / MASKS_FOLDER / MASKS_FILE).read_text().splitlines()]
    assert [(r["role"], r["file"]) for r in records] == (
        [("input", f"car_{i:02d}.png") for i in range(8)] + [("style", f"lego_{i:02d}.png") for i in range(5)])
    assert all(r["fallback"] and r["boxes"] == [] for r in records)
    assert {r["name"] for r in records} == {"car", "lego"}
    overlays = sorted(p.name for p in (run / MASKS_FOLDER).glob("*.png"))
    assert overlays == sorted(r["overlay"] for r in records) and len(overlays) == 13
    assert (f"masks: no 'car' found in 8 of 8 input images; no 'lego' found in 5 of 5 style images "
            f"(fraction without a detection 1.00); look at {run / MASKS_FOLDER}") in start_line
    fractions = [r["mask_fallback_fraction"] for r in read_metrics(run) if "mask_fallback_fraction" in r]
    assert fractions == [1.0, 1.0, 1.0], "the per-epoch fraction still counts every image scored"


@pytest.mark.slow
def test_two_processes_compute_the_same_masks_and_scores_as_one(tiny_ip2p_path, demo_assets_root, tmp_path):
    worker = [str(REPO / "tests" / "constants_worker.py"), str(tiny_ip2p_path), str(demo_assets_root),
              str(tmp_path)]
    alone = run_process_group([sys.executable, *worker, "one"], 900, cwd=tmp_path, env=cpu_worker_env())
    assert alone.returncode == 0, alone.stdout[-2000:] + alone.stderr[-4000:]
    launch_two_processes([*worker, "two"], tmp_path, timeout=900)
    one = torch.load(tmp_path / "one_rank0.pt")
    for rank in (0, 1):
        two = torch.load(tmp_path / f"two_rank{rank}.pt")
        assert two["masks"].keys() == one["masks"].keys()
        for key, mask in one["masks"].items():
            assert torch.equal(two["masks"][key], mask), key
        for name, score in one["scores"].items():
            assert torch.equal(two["scores"][name], score), name
    records = [(tmp_path / f"{run}" / MASKS_FOLDER / MASKS_FILE).read_text() for run in ("one", "two")]
    assert records[0] == records[1]
