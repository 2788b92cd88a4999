"""The evaluator end to end on the demo images with tiny models loaded from disk."""

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image

from editspecialists.demo.images import write_demo_images
from editspecialists.evaluation.evaluator import evaluate
from editspecialists.evaluation.families import (
    ALL_METRICS,
    FAMILIES,
    METRIC_DEFINITIONS,
    EvalBatch,
    FamilySettings,
    parse_metrics,
)
from editspecialists.data.images import image_to_tensor
from editspecialists.evaluation.metrics import patch_similarity_to_style
from editspecialists.evaluation.pairs import PairingError
from editspecialists.generation import write_manifest
from editspecialists.rewards.semantic import downsample_mask
from editspecialists.demo import evaluation_standins
from tests.helpers import REPO, load_config


@pytest.fixture(scope="module")
def tiny_models(tiny_root):
    from editspecialists.demo import feedback_standins

    feedback_standins.build_all(tiny_root)
    evaluation_standins.build_all(tiny_root)
    return evaluation_standins.tiny_models_config(tiny_root)


def perturb(path: Path, out: Path, seed: int) -> None:
    """A fake edit: the input with a brighter noisy rectangle over its lower half."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    rng = np.random.default_rng(seed)
    h = image.shape[0]
    image[h // 2 :] = np.clip(image[h // 2 :] * 0.5 + rng.uniform(0, 128, image[h // 2 :].shape), 0, 255)
    Image.fromarray(image.astype(np.uint8)).save(out)


@pytest.fixture
def eval_config(tmp_path, tiny_models):
    """Demo inputs/styles; edits = exact copies (even inputs) and perturbed inputs (odd ones)."""
    config = load_config("eval")
    inputs, styles = write_demo_images(tmp_path / "data", num_inputs=4, num_styles=2)
    edits = tmp_path / "edits" / "car_lego"
    edits.mkdir(parents=True)
    for i, path in enumerate(sorted(inputs.iterdir())):
        if i % 2 == 0:
            shutil.copy(path, edits / f"edit_{path.name}")
        else:
            perturb(path, edits / f"edit_{path.name}", seed=i)
    config.inputimg_dir, config.styleimg_dir = str(inputs), str(styles)
    config.sample_savedir, config.eval_savedir = str(tmp_path / "edits"), str(tmp_path / "eval")
    config.device, config.batch_size = "cpu", 3
    config.data_resize = 64  # the demo images' own size: scored as they are
    config.models.update(tiny_models)
    return config


def read_rows(config):
    with open(Path(config.eval_savedir) / "car_lego_per_image.csv") as handle:
        return list(csv.DictReader(handle))


def test_every_metric_is_written_finite_and_unchanged_edits_score_the_maximum(eval_config):
    result = evaluate(eval_config)
    out = Path(eval_config.eval_savedir)
    summary = json.loads((out / "car_lego.json").read_text())
    assert summary["metric_definitions"] == METRIC_DEFINITIONS == 2
    assert summary["skipped"] == {}
    assert set(summary["metrics"]) == set(ALL_METRICS)
    for name, stats in summary["metrics"].items():
        assert stats["count"] == 4 and np.isfinite(stats["mean"]) and np.isfinite(stats["std"]), name
    assert result["metrics"] == summary["metrics"]
    assert (out / "car_lego_report.png").is_file()

    rows = read_rows(eval_config)
    assert [r["edit"] for r in rows] == [f"edit_car_0{i}.png" for i in range(4)]
    for row in rows:
        unchanged = row["edit"] in ("edit_car_00.png", "edit_car_02.png")
        values = {name: float(row[name]) for name in ALL_METRICS}
        assert values["semantic_score"] == pytest.approx(values["semantic_score_norec"] + 0.5 * values["l2_out"], abs=1e-6)
        if unchanged:
            assert values["l2_out"] == 0 and values["structural_score"] == 0
            assert values["clip_dir"] == values["clip_dir_normalized"] == 0
            for prefix in ("clipSim", "dinoSim", "dreamsimSim"):
                assert values[f"{prefix}_gen_input_aligned"] == pytest.approx(1.0, abs=1e-5)
                # All pairs: below 1 whenever the background holds two different patches, which the
                # tiny models' masks do not always leave; test_evaluation_paper_metrics.py checks the
                # formula and its difference from the aligned variant by hand.
                assert values[f"{prefix}_gen_input"] <= 1 + 1e-6
        else:
            assert values["l2_out"] > 0 and values["structural_score"] > 0
            assert values["clip_dir"] != pytest.approx(values["clip_dir_normalized"], abs=1e-4)
            for prefix in ("clipSim", "dinoSim", "dreamsimSim"):
                assert values[f"{prefix}_gen_input_aligned"] < 1 - 1e-4
    means = {name: np.mean([float(r[name]) for r in rows]) for name in ALL_METRICS}
    assert means == pytest.approx({k: v["mean"] for k, v in summary["metrics"].items()})


def test_selected_metrics_only_and_a_missing_model_skips_with_one_line(eval_config, caplog):
    eval_config.metrics = "hps_score, imgrew_score,pick_score"
    eval_config.models.hps_checkpoint = str(Path(eval_config.eval_savedir) / "missing.pt")
    with caplog.at_level(logging.WARNING, logger="editspecialists.evaluation.evaluator"):
        result = evaluate(eval_config)
    skip_lines = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skip_lines) == 1 and "hps_score" in skip_lines[0] and "missing.pt" in skip_lines[0]
    assert set(result["metrics"]) == {"imgrew_score", "pick_score"}
    assert set(result["skipped"]) == {"hps_score"}
    assert set(read_rows(eval_config)[0]) == {"edit", "input", "style", "prompt", "imgrew_score", "pick_score"}


def test_missing_mask_models_skip_only_the_mask_metrics(eval_config, caplog):
    eval_config.metrics = "l2_out,pick_score"
    eval_config.models.detector = str(Path(eval_config.eval_savedir) / "no-detector")
    with caplog.at_level(logging.WARNING):
        result = evaluate(eval_config)
    assert set(result["metrics"]) == {"pick_score"} and "mask models unavailable" in result["skipped"]["l2_out"]


def test_whole_frame_needs_no_mask_models_and_compares_whole_images(eval_config):
    eval_config.metrics = "l2_out,dinoSim_gen_input"
    eval_config.whole_frame = True
    eval_config.models.detector = str(Path(eval_config.eval_savedir) / "no-detector")
    result = evaluate(eval_config)
    assert result["skipped"] == {}
    rows = read_rows(eval_config)
    perturbed = next(r for r in rows if r["edit"] == "edit_car_01.png")
    edit = image_to_tensor(Image.open(Path(eval_config.sample_savedir) / "car_lego" / "edit_car_01.png"))
    source = image_to_tensor(Image.open(Path(eval_config.inputimg_dir) / "car_01.png"))
    assert float(perturbed["l2_out"]) == pytest.approx((edit - source).pow(2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("data_resize", [256, 0])
def test_images_are_scored_at_data_resize_as_the_original_or_at_the_edits_size(eval_config, data_resize):
    """Default 256: edit, input and style each through torchvision's Resize(256) + CenterCrop(256)
    before every metric, as the original's evaluate.py; 0: the edits' own size (64 here)."""
    from torchvision import transforms as T

    assert load_config("eval").data_resize == 256
    eval_config.metrics, eval_config.whole_frame = "l2_out", True
    eval_config.data_resize = data_resize
    result = evaluate(eval_config)
    assert (result["data_resize"], result["resize_filter"]) == (data_resize, "bilinear")
    original = T.Compose([T.Resize(256), T.CenterCrop(256), T.ToTensor()]) if data_resize else T.ToTensor()
    rows = {r["edit"]: float(r["l2_out"]) for r in read_rows(eval_config)}
    for index in (1, 3):
        edit = original(Image.open(Path(eval_config.sample_savedir) / "car_lego" / f"edit_car_0{index}.png"))
        source = original(Image.open(Path(eval_config.inputimg_dir) / f"car_0{index}.png"))
        assert edit.shape[-1] == (data_resize or 64)
        assert rows[f"edit_car_0{index}.png"] == pytest.approx((edit - source).pow(2).mean().item(), rel=1e-6)


def test_selecting_our_variants_by_name(eval_config):
    eval_config.metrics = "clip_dir_normalized,dinoSim_gen_input_aligned,semantic_score_norec"
    result = evaluate(eval_config)
    assert set(result["metrics"]) == {"clip_dir_normalized", "dinoSim_gen_input_aligned", "semantic_score_norec"}
    columns = set(read_rows(eval_config)[0]) - {"edit", "input", "style", "prompt"}
    assert columns == set(result["metrics"])


def test_metric_selection_parsing():
    assert parse_metrics(["pick_score", " l2_out", "pick_score"]) == ["pick_score", "l2_out"]
    assert parse_metrics("all") == list(ALL_METRICS) and len(ALL_METRICS) == 19
    assert parse_metrics("clip_dir,clip_dir_normalized") == ["clip_dir", "clip_dir_normalized"]
    with pytest.raises(ValueError, match="selects no metric"):
        parse_metrics(" , ")


def test_config_lists_every_metric_name():
    words = set(re.findall(r"\w+", (REPO / "config" / "eval.py").read_text()))
    assert [m for m in ALL_METRICS if m not in words] == []


def test_unknown_metric_is_rejected(eval_config):
    eval_config.metrics = "pick_score,fid"
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['fid'\]"):
        evaluate(eval_config)


def test_clear_errors_for_missing_folder_and_unmatched_edit_and_a_corrupt_edit_left_out(eval_config, caplog):
    eval_config.metrics = "pick_score"
    edits = Path(eval_config.sample_savedir) / "car_lego"
    eval_config.input_name = "bus"
    with pytest.raises(FileNotFoundError, match=r"edits folder .*bus_lego does not exist"):
        evaluate(eval_config)
    eval_config.input_name = "car"
    Image.new("RGB", (64, 64)).save(edits / "edit_truck_9.png")
    with pytest.raises(PairingError, match="edit_truck_9.png has no matching input"):
        evaluate(eval_config)
    (edits / "edit_truck_9.png").unlink()
    corrupt = edits / "edit_car_01.png"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="editspecialists.evaluation.evaluator"):
        result = evaluate(eval_config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not scoring 1 edit(s)" in warnings[0] and "edit_car_01.png (unreadable:" in warnings[0]
    assert (result["edits_listed"], result["edits_scored"]) == (4, 3)
    assert [row["edit"] for row in read_rows(eval_config)] == ["edit_car_00.png", "edit_car_02.png", "edit_car_03.png"]


def write_models_manifest(edits: Path, models: dict[str, dict | None]) -> None:
    """A generation manifest listing ``{edit name: model record}`` (inputs named after the edits)."""
    write_manifest(edits, {name: {"input": name[len("edit_"):], "style": "lego_00.png", "prompt": "p", "seed": 0,
                                  "edit": name, "model": model} for name, model in models.items()})


def test_output_names_edits_models_and_left_out_edits_and_keeps_earlier_results(eval_config, caplog):
    """Missing, unreadable and unlisted edits are named in one warning and counted; the models come
    from the manifest; an evaluation of other edits is written beside the first, and a rerun with
    the same settings replaces its own files."""
    eval_config.metrics, eval_config.whole_frame = "l2_out", True
    edits = Path(eval_config.sample_savedir) / "car_lego"
    trained = {"base": "tiny-ip2p", "revision": "main", "checkpoint": "/runs/a/checkpoint_0001", "weights_sha256": "ab" * 32}
    write_models_manifest(edits, {"edit_car_00.png": trained, "edit_car_01.png": trained, "edit_car_02.png": trained})
    (edits / "edit_car_01.png").write_bytes(b"")
    (edits / "edit_car_02.png").unlink()
    shutil.copy(edits / "edit_car_00.png", edits / "edit_car_stray.png")
    with caplog.at_level(logging.WARNING, logger="editspecialists.evaluation.evaluator"):
        first = evaluate(eval_config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not scoring 4 edit(s)" in warnings[0] and "(3 listed)" in warnings[0]
    left_out = {"edit_car_01.png": "unreadable:", "edit_car_02.png": "listed in manifest.jsonl but missing",
                "edit_car_03.png": "not listed in manifest.jsonl", "edit_car_stray.png": "not listed"}
    for name, reason in left_out.items():
        assert f"{name} ({reason}" in warnings[0]
    out = Path(eval_config.eval_savedir)
    saved = json.loads((out / "car_lego.json").read_text())
    assert saved["edits"] == str(edits.resolve()) and saved["models"] == [trained]
    assert (saved["edits_listed"], saved["edits_scored"]) == (3, 1)
    assert sorted(saved["edits_not_scored"]) == sorted(left_out) and saved["metrics"] == first["metrics"]
    assert saved["metrics"]["l2_out"]["count"] == 1

    first_files = {p.name: p.read_bytes() for p in out.iterdir()}
    write_models_manifest(edits, {"edit_car_00.png": None, "edit_car_03.png": None})
    second = evaluate(eval_config)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in first_files} == first_files
    assert sorted(set(p.name for p in out.iterdir()) - set(first_files)) == [
        "car_lego.2.json", "car_lego.2_per_image.csv", "car_lego.2_report.png"]
    assert json.loads((out / "car_lego.2.json").read_text())["models"] == second["models"] == [None]
    assert json.loads((out / "car_lego.2.json").read_text())["files"] == [
        "car_lego.2.json", "car_lego.2_per_image.csv", "car_lego.2_report.png"]
    names = sorted(p.name for p in out.iterdir())
    evaluate(eval_config)
    assert sorted(p.name for p in out.iterdir()) == names, "the same settings replace their own files"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in first_files} == first_files


def test_no_scorable_edit_is_an_error_naming_each(eval_config):
    eval_config.metrics, eval_config.whole_frame = "l2_out", True
    edits = Path(eval_config.sample_savedir) / "car_lego"
    write_models_manifest(edits, {"edit_car_00.png": None, "edit_car_01.png": None})
    (edits / "edit_car_00.png").write_bytes(b"")
    (edits / "edit_car_01.png").unlink()
    with pytest.raises(ValueError, match=r"no edit of .*car_lego can be scored: edit_car_00.png \(unreadable: .*"
                                         r"edit_car_01.png \(listed in manifest.jsonl but missing\)"):
        evaluate(eval_config)


def test_gen_sty_through_a_real_patch_embedder_follows_the_formula(tiny_models, tmp_path):
    """Edit and style swapped: the result is the formula with swapped roles, computed by hand."""
    settings = FamilySettings(ml_collections.ConfigDict(tiny_models), torch.device("cpu"), torch.float32)
    family = FAMILIES["dino_patches"].build(settings)
    embedder = settings.patch_embedder("dinov2", tiny_models["dino"])
    inputs, styles = write_demo_images(tmp_path, num_inputs=1, num_styles=1)
    a = image_to_tensor(Image.open(next(inputs.iterdir())))[None]
    b = image_to_tensor(Image.open(next(styles.iterdir())))[None]
    h, w = a.shape[-2:]
    input_mask = torch.zeros(1, h, w, dtype=torch.bool)
    input_mask[:, h // 2 :] = True
    style_mask = torch.zeros(1, h, w, dtype=torch.bool)
    style_mask[:, :, : w // 4] = True

    def gen_sty(edit, style):
        batch = EvalBatch(edit, a, style, ["p"], ["car"], input_mask, style_mask)
        return family(batch)["dinoSim_gen_sty"]

    tokens_a, grid = embedder(a)
    tokens_b, _ = embedder(b)
    region_in, region_sty = downsample_mask(input_mask, grid), downsample_mask(style_mask, grid)
    assert torch.allclose(gen_sty(a, b), patch_similarity_to_style(tokens_a, tokens_b, region_in, region_sty), atol=1e-5)
    assert torch.allclose(gen_sty(b, a), patch_similarity_to_style(tokens_b, tokens_a, region_in, region_sty), atol=1e-5)
    assert not torch.allclose(gen_sty(a, b), gen_sty(b, a), atol=1e-4)


def test_demo_preset_points_every_model_at_local_tiny_folders():
    from editspecialists.demo.cache import default_cache_root

    config = load_config("eval", "demo")
    assert config.demo_root and config.sample_savedir == "outputs/demo_edits"
    cache = str(default_cache_root())
    for key, value in config.models.items():
        assert value.startswith(cache + "/"), key
    assert config.models.hps_architecture.endswith(".json")
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("eval", "nope")
