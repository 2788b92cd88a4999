"""Held-out validation in real runs, and the base-vs-specialist evaluation (issue 24's checks).

One short run (random tiny InstructPix2Pix, the demo's feedback stand-ins, 2 held-out inputs x 2
seeds, 2 epochs) serves every test of this file.
"""

import json
import shutil

import pytest
import torch

from editspecialists.data.dataset import EditDataset
from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.evaluation.compare import compare_with_base
from editspecialists.rewards import build_scorer
from editspecialists.specialist.pipeline import EditSpecialistPipeline
from editspecialists.formats import checkpoint as ckpt
from editspecialists.training.tracking import read_metrics
from editspecialists.training.trainer import Trainer
from editspecialists.training.validation import VALIDATION_FILE, read_rows
from tests.helpers import load_config, tiny_brightness_config

pytestmark = pytest.mark.slow
SCORES = ["brightness", "semantic", "structural", "reconstruction"]  # val.scores "auto" of the brightness preset
HELD_OUT = ["car_01.png", "car_07.png"]  # the names of the 8 demo cars below 0.2 (data.held_out.name_fraction)


def validated_config(tiny_ip2p_path, tmp_path, **overrides):
    return tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs",
                                  **{"val.every": 1, "val.inputimg_dir": "", "val.fraction": 0.2, "val.seeds": 2,
                                     "num_checkpoint_limit": 0,
                                     **overrides})


@pytest.fixture(scope="module")
def validated_run(demo_assets_root, tiny_ip2p_path, tmp_path_factory):
    """(trainer, run folder, input files of every training batch, validation rows) of a 2-epoch run
    whose checkpoint_0000 holds its initial weights (the base model's)."""
    tmp_path = tmp_path_factory.mktemp("validated")
    sampled = []
    original = EditDataset.epoch_batches

    def recording(self, *args, **kwargs):
        batches = original(self, *args, **kwargs)
        sampled.extend(name for batch in batches for name in batch.input_files)
        return batches

    EditDataset.epoch_batches = recording
    try:
        trainer = Trainer(validated_config(tiny_ip2p_path, tmp_path)).load()
        trainer.save_checkpoint(0)
        run = trainer.run()
    finally:
        EditDataset.epoch_batches = original
    return trainer, run, sampled, read_rows(run / VALIDATION_FILE)


def test_every_held_out_edit_is_validated_at_every_point_and_never_trained_on(validated_run):
    trainer, run, sampled, rows = validated_run
    assert trainer.validation_set.held_out.files == HELD_OUT
    assert sampled and not set(sampled) & set(HELD_OUT)
    assert set(sampled) <= {f"car_{i:02d}.png" for i in range(8)} - set(HELD_OUT)
    items = trainer.validation_set.items
    assert len({item["seed"] for item in items}) == 4 and {item["input"] for item in items} == set(HELD_OUT)
    expected = sorted((after, item["input"], item["seed"]) for after in (0, 1, 2) for item in items)
    assert sorted((row["after_epochs"], row["input"], row["seed"]) for row in rows) == expected
    assert all(torch.isfinite(torch.tensor([row[name] for name in SCORES])).all() for row in rows)
    summaries = [record for record in read_metrics(run) if "after_epochs" in record]
    assert [record["after_epochs"] for record in summaries] == [0, 1, 2]
    assert all(summaries[0][f"val/{name}_delta"] == 0 for name in SCORES)
    for record in summaries[1:]:
        later = [row for row in rows if row["after_epochs"] == record["after_epochs"]]
        base = {(row["input"], row["seed"]): row for row in rows if row["after_epochs"] == 0}
        for name in SCORES:
            diffs = torch.tensor([row[name] - base[row["input"], row["seed"]][name] for row in later], dtype=torch.float64)
            assert record[f"val/{name}_delta"] == pytest.approx(float(diffs.mean()), abs=1e-12)
            assert record[f"val/{name}_delta_se"] == pytest.approx(float(diffs.std() / 2), abs=1e-12)
    for after in (0, 1, 2):
        assert (run / "validation" / f"after_{after:03d}.png").is_file()
    assert (run / "masks" / "held_out_car_01.png.png").is_file()


def test_the_base_validation_is_a_separate_base_model_generation_scored_by_the_training_code(validated_run,
                                                                                              tiny_ip2p_path):
    trainer, _, _, rows = validated_run
    config, vset = trainer.config, trainer.validation_set
    pipe = EditSpecialistPipeline.from_base(str(tiny_ip2p_path), scheduler=config.pretrained.scheduler).to("cpu")
    edits = pipe.edit_tensors(vset.inputs, vset.styles, [item["prompt"] for item in vset.items],
                              [pipe.generator(item["seed"]) for item in vset.items],
                              num_inference_steps=config.sample.num_steps, eta=config.sample.eta,
                              scales=GuidanceScales(config.sample.guidance_scale, config.sample.image_guidance_scale,
                                                    config.sample.style_image_guidance_scale))
    scorer = build_scorer(config, "cpu", names=SCORES)
    base = {(row["input"], row["seed"]): row for row in rows if row["after_epochs"] == 0}
    for index, item in enumerate(vset.items):
        one = slice(index, index + 1)
        scores = scorer(edits[one], vset.inputs[one], vset.styles[one])
        for name in SCORES:
            assert base[item["input"], item["seed"]][name] == pytest.approx(float(scores[name]), rel=1e-4, abs=1e-6)


def test_a_resumed_run_redoes_the_validations_after_its_checkpoint_once(validated_run, tiny_ip2p_path, tmp_path):
    _, run, _, rows = validated_run
    copy = tmp_path / "logs" / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / ckpt.CHECKPOINTS / ckpt.checkpoint_name(2))  # killed before saving epoch 2's
    config = validated_config(tiny_ip2p_path, tmp_path / "again", **{"load_checkpoint": str(copy)})
    config.logdir, config.run_name = str(tmp_path / "logs"), "run"
    resumed = Trainer(config).load()
    assert resumed.first_epoch == 1
    resumed.run()
    again = read_rows(copy / VALIDATION_FILE)
    assert again == rows  # one row per edit and validation; resuming is exact, so the redone ones equal


def test_base_vs_specialist_reports_both_models_and_a_base_against_itself_differs_by_zero(validated_run, tmp_path):
    _, run, _, _ = validated_run
    untrained = run / ckpt.CHECKPOINTS / ckpt.checkpoint_name(0)
    config = load_config("eval", "demo")
    config.demo_root = ""
    config.eval_savedir = str(tmp_path / "eval")
    config.metrics = "semantic_score,structural_score,l2_out,dreamsimSim_gen_sty"
    for checkpoint, same in ((untrained, True), (run, False)):
        config.base_vs_specialist = str(checkpoint)
        payload = compare_with_base(config)
        assert payload["edits_compared"] == 4 and payload["held_out"]["inputs"] == HELD_OUT
        assert set(payload["metrics"]) == {"semantic_score", "structural_score", "l2_out", "dreamsimSim_gen_sty"}
        for name, metric in payload["metrics"].items():
            assert metric["count"] == 4
            if same:
                assert (metric["delta"], metric["delta_se"]) == (0.0, 0.0), name
                assert metric["base"] == metric["specialist"] and metric["verdict"] == "no clear change"
        out = tmp_path / "eval" / "car_lego_base_vs_specialist"
        assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(payload))
        shutil.rmtree(out)  # the next comparison is of another specialist


def test_base_vs_specialist_on_a_folder_of_other_images_never_the_training_folder(validated_run, tmp_path):
    """compare_inputimg_dir: both models edit that folder's images compare_seeds times each, into a
    folder of their own; the run's training folder is refused, naming the key."""
    from editspecialists.demo.images import write_held_out_images

    _, run, _, _ = validated_run
    others = write_held_out_images(tmp_path / "others", num_inputs=3, size=32, first=8)
    config = load_config("eval", "demo")
    config.demo_root, config.eval_savedir = "", str(tmp_path / "eval")
    config.metrics = "semantic_score,structural_score"
    config.base_vs_specialist, config.compare_inputimg_dir, config.compare_seeds = str(run), str(others), 1
    payload = compare_with_base(config)
    assert payload["held_out"] == {"folder": str(others), "source": "compare_inputimg_dir",
                                   "inputs": [f"car_heldout_{i:02d}.png" for i in (8, 9, 10)], "seeds_per_input": 1}
    assert payload["edits_compared"] == 3 and payload["metrics"]["semantic_score"]["count"] == 3
    out = tmp_path / "eval" / "car_lego_base_vs_specialist_on_others"
    assert sorted(path.name for path in (out / "base" / "car_lego").glob("edit_*.png")) == [
        f"edit_car_heldout_{i:02d}.png" for i in (8, 9, 10)]

    config.compare_inputimg_dir = ckpt.saved_run_config(ckpt.resolve_checkpoint(str(run))).inputimg_dir
    with pytest.raises(ValueError, match="--config.compare_inputimg_dir: .* is the training folder .* the run of "
                                         ".* never trained on"):
        compare_with_base(config)
