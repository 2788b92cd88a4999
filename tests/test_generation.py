"""generate.py's library: edits on disk, manifest, resuming, checkpoints that change the edits."""

import numpy as np
import pytest
import torch

from editspecialists.data.dataset import PROMPT_TEMPLATES
from editspecialists.data.images import list_images, load_image
from editspecialists.generation import generate_edits, image_seed, plan_edits, read_manifest
from editspecialists.training.trainer import Trainer
from tests.helpers import tiny_brightness_config


def generation_config(tiny_ip2p_path, tmp_path, **overrides):
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", **overrides)
    config.sample.sample_savedir = str(tmp_path / "edits")
    config.sample.batch_size = 3
    return config


def test_generate_writes_edits_and_manifest_then_resumes(tiny_ip2p_path, tmp_path, capsys):
    config = generation_config(tiny_ip2p_path, tmp_path)
    folder = generate_edits(config)
    assert "base InstructPix2Pix" in capsys.readouterr().out
    assert folder == tmp_path / "edits" / "car_lego"
    manifest = read_manifest(folder)
    assert sorted(manifest) == [f"edit_car_{i:02d}.png" for i in range(8)]
    entry = manifest["edit_car_03.png"]
    assert entry["input"] == "car_03.png"
    assert entry["prompt"] == PROMPT_TEMPLATES[entry["template"]].format(input="car", style="lego")
    assert entry["style"].startswith("lego_") and isinstance(entry["seed"], int)
    assert load_image(folder / "edit_car_03.png").shape == (3, 32, 32)

    stamp = (folder / "edit_car_03.png").stat().st_mtime_ns
    (folder / "edit_car_05.png").unlink()
    generate_edits(config)
    assert (folder / "edit_car_05.png").is_file()
    assert (folder / "edit_car_03.png").stat().st_mtime_ns == stamp, "existing edits are skipped"
    assert len(read_manifest(folder)) == 8


def test_edits_do_not_depend_on_batching(tiny_ip2p_path, tmp_path):
    config = generation_config(tiny_ip2p_path, tmp_path)
    first = generate_edits(config)
    reference = load_image(first / "edit_car_06.png")
    config.sample.batch_size = 1
    config.overwrite = True
    config.sample.sample_savedir = str(tmp_path / "single")
    again = load_image(generate_edits(config) / "edit_car_06.png")
    torch.testing.assert_close(again, reference, atol=1 / 255, rtol=0)


@pytest.mark.slow
def test_a_trained_checkpoint_changes_the_edits(tiny_ip2p_path, tmp_path):
    train_config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=1)
    train_config.train.learning_rate = 5e-2
    run = Trainer(train_config).run()
    base = generate_edits(generation_config(tiny_ip2p_path, tmp_path))
    config = generation_config(tiny_ip2p_path, tmp_path, load_checkpoint=str(run))
    config.sample.sample_savedir = str(tmp_path / "trained")
    trained = generate_edits(config)
    difference = (load_image(trained / "edit_car_00.png") - load_image(base / "edit_car_00.png")).abs().max()
    assert difference > 2 / 255


def test_missing_checkpoint_is_a_clear_error(tiny_ip2p_path, tmp_path):
    config = generation_config(tiny_ip2p_path, tmp_path, load_checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        generate_edits(config)


def test_inputs_that_would_share_an_edit_file_are_refused(tiny_ip2p_path, tmp_path):
    config = generation_config(tiny_ip2p_path, tmp_path, **{"pretrained.model": str(tmp_path / "unused")})
    inputs = tmp_path / "data" / "inputs"
    (inputs / "car_03.jpg").write_bytes((inputs / "car_04.png").read_bytes())
    with pytest.raises(ValueError, match=r"car_03.jpg and car_03.png in .*inputs would be written to the same"):
        generate_edits(config)
    assert not (tmp_path / "edits" / "car_lego" / "manifest.jsonl").exists()


def test_each_image_draws_its_prompt_template_from_its_seed(tiny_ip2p_path, tmp_path):
    """As the original: the image's seed draws its style image, then its template (0..7)."""
    config = generation_config(tiny_ip2p_path, tmp_path)
    entries = plan_edits(config, tmp_path / "edits")
    styles = list_images(config.styleimg_dir, "style image")
    for entry in entries:
        rng = np.random.default_rng(image_seed(config.seed, entry["input"]))
        assert entry["style"] == styles[rng.integers(len(styles))].name
        assert entry["template"] == rng.integers(len(PROMPT_TEMPLATES))
        assert entry["prompt"] == PROMPT_TEMPLATES[entry["template"]].format(input="car", style="lego")
    assert len({entry["template"] for entry in entries}) > 2


def test_first_template_option_keeps_one_prompt(tiny_ip2p_path, tmp_path):
    config = generation_config(tiny_ip2p_path, tmp_path, **{"sample.generation_prompt": "first"})
    entries = plan_edits(config, tmp_path / "edits")
    assert {(entry["template"], entry["prompt"]) for entry in entries} == {(0, "turn the car into lego")}
    per_image = plan_edits(generation_config(tiny_ip2p_path, tmp_path), tmp_path / "edits")
    assert [entry["style"] for entry in entries] == [entry["style"] for entry in per_image]


def test_unknown_generation_prompt_names_the_key(tiny_ip2p_path, tmp_path):
    config = generation_config(tiny_ip2p_path, tmp_path, **{"sample.generation_prompt": "random"})
    with pytest.raises(ValueError, match="sample.generation_prompt must be 'per_image' or 'first', got 'random'"):
        plan_edits(config, tmp_path / "edits")
