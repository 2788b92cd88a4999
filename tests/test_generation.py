"""generate.py's library: edits on disk, manifest, resuming, provenance, checkpoints that change
the edits, batch sizes."""

import shutil

import numpy as np
import pytest
import torch

from editspecialists.data.dataset import PROMPT_TEMPLATES
from editspecialists.data.images import list_images, load_image
from editspecialists.data.edit_plan import image_seed
from editspecialists.generation import generate_edits, planned_edits, read_manifest
from editspecialists.formats import checkpoint as ckpt
from editspecialists.training.trainer import Trainer
from tests.helpers import tiny_brightness_config


def generation_config(tiny_ip2p_path, tmp_path, **overrides):
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", **overrides)
    config.sample.sample_savedir = str(tmp_path / "edits")
    config.sample.batch_size = 3
    return config


def test_generate_writes_edits_and_manifest_then_resumes(tiny_ip2p_path, tmp_path, caplog):
    config = generation_config(tiny_ip2p_path, tmp_path)
    folder = generate_edits(config)
    assert any("is the base InstructPix2Pix model, untrained" in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING")
    assert folder == tmp_path / "edits" / "car_lego"
    manifest = read_manifest(folder)
    assert sorted(manifest) == [f"edit_car_{i:02d}.png" for i in range(8)]
    entry = manifest["edit_car_03.png"]
    assert entry["input"] == "car_03.png"
    assert entry["prompt"] == PROMPT_TEMPLATES[entry["template"]].format(input="car", style="lego")
    assert entry["style"].startswith("lego_") and isinstance(entry["seed"], int)
    assert entry["model"] == {"base": str(tiny_ip2p_path), "revision": "main", "checkpoint": None,
                              "weights_sha256": None}
    assert load_image(folder / "edit_car_03.png").shape == (3, 32, 32)

    stamp = (folder / "edit_car_03.png").stat().st_mtime_ns
    (folder / "edit_car_05.png").unlink()
    generate_edits(config)
    assert (folder / "edit_car_05.png").is_file()
    assert (folder / "edit_car_03.png").stat().st_mtime_ns == stamp, "existing edits are skipped"
    assert len(read_manifest(folder)) == 8


def edit_pixels(folder):
    """{edit name: (3, H, W) uint8-valued float tensor} of a generated folder."""
    return {path.name: (load_image(path) * 255).round() for path in sorted(folder.glob("edit_*.png"))}


def test_same_batch_size_is_exact_and_another_moves_a_few_pixels_by_one_level(tiny_ip2p_path, tmp_path):
    """As the README says: the same seed and batch size give identical pixels; batch size 1 against
    4 differs by at most 1/255, at a few pixels (batched convolutions round differently)."""
    runs = {}
    for name, batch_size in (("four", 4), ("four_again", 4), ("one", 1)):
        config = generation_config(tiny_ip2p_path, tmp_path)
        config.sample.batch_size = batch_size
        config.sample.sample_savedir = str(tmp_path / name)
        runs[name] = edit_pixels(generate_edits(config))
    assert len(runs["four"]) == 8
    for edit, pixels in runs["four"].items():
        assert torch.equal(runs["four_again"][edit], pixels), edit
        difference = (runs["one"][edit] - pixels).abs()
        assert difference.max() <= 1, edit
        assert (difference > 0).float().mean() < 0.01, edit


@pytest.mark.slow
def test_a_trained_checkpoint_changes_the_edits_and_is_recorded(tiny_ip2p_path, tmp_path):
    train_config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=1)
    train_config.train.learning_rate = 5e-2
    run = Trainer(train_config).run()
    checkpoint = ckpt.resolve_checkpoint(run).resolve()
    base = generate_edits(generation_config(tiny_ip2p_path, tmp_path))
    base_edit = load_image(base / "edit_car_00.png")

    config = generation_config(tiny_ip2p_path, tmp_path, load_checkpoint=str(run))
    with pytest.raises(ValueError) as refused:
        generate_edits(config)
    message = str(refused.value)
    assert f"{base} holds edits of {tiny_ip2p_path} (revision main) without a checkpoint" in message
    assert f"this run edits with {tiny_ip2p_path} (revision main) with checkpoint {checkpoint}" in message
    assert "overwrite=True" in message
    assert torch.equal(load_image(base / "edit_car_00.png"), base_edit), "refused before writing"

    config.overwrite = True
    trained = generate_edits(config)
    assert (load_image(trained / "edit_car_00.png") - base_edit).abs().max() > 2 / 255
    expected = {"base": str(tiny_ip2p_path), "revision": "main", "checkpoint": str(checkpoint),
                "weights_sha256": ckpt.weights_sha256(checkpoint)}
    assert [entry["model"] for entry in read_manifest(trained).values()] == [expected] * 8

    moved = tmp_path / "moved_run"
    shutil.copytree(run, moved)
    config = generation_config(tiny_ip2p_path, tmp_path, load_checkpoint=str(moved))
    stamp = (trained / "edit_car_00.png").stat().st_mtime_ns
    generate_edits(config)
    assert (trained / "edit_car_00.png").stat().st_mtime_ns == stamp, "same weights elsewhere: same model"


def test_edits_of_another_base_model_are_refused_naming_both(tiny_ip2p_path, tmp_path):
    folder = generate_edits(generation_config(tiny_ip2p_path, tmp_path, **{"sample.num_steps": 2}))
    before = (folder / "manifest.jsonl").read_text()
    config = generation_config(tiny_ip2p_path, tmp_path, **{"sample.num_steps": 2, "pretrained.revision": "v2"})
    with pytest.raises(ValueError, match=rf"holds edits of {tiny_ip2p_path} \(revision main\) without a checkpoint; "
                                         rf"this run edits with {tiny_ip2p_path} \(revision v2\) without"):
        generate_edits(config)
    assert (folder / "manifest.jsonl").read_text() == before


def test_missing_checkpoint_is_a_clear_error(tiny_ip2p_path, tmp_path):
    config = generation_config(tiny_ip2p_path, tmp_path, load_checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        generate_edits(config)


def test_edits_keep_their_inputs_format_as_the_original_or_are_written_as_png(tiny_ip2p_path, tmp_path):
    """sample.edit_format "input" (default): car_03.jpg gives edit_car_03.jpg, a JPEG at Pillow's
    default quality 75 of the very edit that "png" writes losslessly; "png" refuses car_03.jpg
    beside car_03.png (one edit file); a folder is never filled in two formats."""
    import io

    from PIL import Image

    inputs = tmp_path / "data" / "inputs"
    config = generation_config(tiny_ip2p_path, tmp_path, **{"sample.num_steps": 2, "sample.batch_size": 1})
    assert config.sample.edit_format == "input"
    Image.open(inputs / "car_04.png").save(inputs / "car_03.jpg")
    for path in inputs.glob("car_0[5-7].png"):
        path.unlink()
    config.sample.edit_format = "png"
    with pytest.raises(ValueError, match=r"car_03.jpg and car_03.png in .*inputs would be written to the same"):
        generate_edits(config)
    assert not (tmp_path / "edits" / "car_lego" / "manifest.jsonl").exists()

    config.sample.edit_format = "input"
    as_input = generate_edits(config)
    assert {"edit_car_03.jpg", "edit_car_03.png"} <= set(read_manifest(as_input))
    assert Image.open(as_input / "edit_car_03.jpg").format == "JPEG"
    assert Image.open(as_input / "edit_car_03.png").format == "PNG"

    (inputs / "car_03.png").unlink()
    config.sample.edit_format, config.sample.sample_savedir = "png", str(tmp_path / "png")
    lossless = Image.open(generate_edits(config) / "edit_car_03.png")
    encoded = io.BytesIO()
    lossless.save(encoded, format="JPEG")  # Pillow's defaults, as the original's save
    assert np.array_equal(np.asarray(Image.open(encoded)), np.asarray(Image.open(as_input / "edit_car_03.jpg")))

    config.sample.sample_savedir = str(tmp_path / "edits")
    with pytest.raises(ValueError, match="edit_car_03.jpg of car_03.jpg, written with another sample.edit_format"):
        generate_edits(config)


def test_generation_and_hps_autocast_to_fp16_on_cuda_only():
    import warnings

    from editspecialists.precision import cuda_autocast

    for enabled, device in ((True, "cpu"), (False, "cpu"), (False, "cuda")):
        context = cuda_autocast(enabled, torch.device(device))
        assert not isinstance(context, torch.autocast), (enabled, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that it disables CUDA autocast on a machine without CUDA
        context = cuda_autocast(True, torch.device("cuda"))
    assert isinstance(context, torch.autocast) and context.device == "cuda" and context.fast_dtype == torch.float16


def test_each_image_draws_its_prompt_template_from_its_seed(tiny_ip2p_path, tmp_path):
    """As the original: the image's seed draws its style image, then its template (0..7)."""
    config = generation_config(tiny_ip2p_path, tmp_path)
    entries = planned_edits(config)
    styles = list_images(config.styleimg_dir, "style image")
    for entry in entries:
        rng = np.random.default_rng(image_seed(config.seed, entry["input"]))
        assert entry["style"] == styles[rng.integers(len(styles))].name
        assert entry["template"] == rng.integers(len(PROMPT_TEMPLATES))
        assert entry["prompt"] == PROMPT_TEMPLATES[entry["template"]].format(input="car", style="lego")
    assert len({entry["template"] for entry in entries}) > 2


def test_first_template_option_keeps_one_prompt(tiny_ip2p_path, tmp_path):
    config = generation_config(tiny_ip2p_path, tmp_path, **{"sample.generation_prompt": "first"})
    entries = planned_edits(config)
    assert {(entry["template"], entry["prompt"]) for entry in entries} == {(0, "turn the car into lego")}
    per_image = planned_edits(generation_config(tiny_ip2p_path, tmp_path))
    assert [entry["style"] for entry in entries] == [entry["style"] for entry in per_image]


def test_unknown_generation_prompt_names_the_key(tiny_ip2p_path, tmp_path):
    config = generation_config(tiny_ip2p_path, tmp_path, **{"sample.generation_prompt": "random"})
    with pytest.raises(ValueError, match="sample.generation_prompt must be one of \\['per_image', 'first'\\], got 'random'"):
        planned_edits(config)
