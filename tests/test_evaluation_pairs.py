"""Pairing edits with inputs and styles; clear errors for folders and files that do not fit."""

import json

import pytest
import torch
from PIL import Image

from editspecialists.data.images import UnreadableImageError, image_to_tensor, load_image, read_rgb
from editspecialists.evaluation.pairs import PairingError, pair_edits


def _png(path, colour=(10, 20, 30), size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def folders(tmp_path):
    inputs, styles, edits = tmp_path / "inputs", tmp_path / "styles", tmp_path / "edits" / "car_lego"
    for name in ("my_red_car_01.png", "car.jpg", "car_2.png"):
        _png(inputs / name)
    for name in ("lego_a.png", "lego_b.png", "lego_c.png"):
        _png(styles / name)
    return inputs, styles, edits


def _pair(folders, seed=0):
    inputs, styles, edits = folders
    return pair_edits(edits, inputs, styles, "red car", "lego", seed).items


def test_pairs_by_file_name_with_underscores_and_extension_change(folders):
    _, _, edits = folders
    for name in ("edit_my_red_car_01.png", "edit_car.png", "edit_car_2.png", "notes.png"):
        _png(edits / name)
    items = _pair(folders)
    assert [(i.edit.name, i.input.name) for i in items] == [
        ("edit_car.png", "car.jpg"),
        ("edit_car_2.png", "car_2.png"),
        ("edit_my_red_car_01.png", "my_red_car_01.png"),
    ]
    assert {i.prompt for i in items} == {"red car made out of lego"}


def test_style_choice_without_manifest_is_seeded(folders):
    _, _, edits = folders
    for name in ("edit_my_red_car_01.png", "edit_car.png", "edit_car_2.png"):
        _png(edits / name)
    first = [i.style.name for i in _pair(folders, seed=3)]
    assert first == [i.style.name for i in _pair(folders, seed=3)]
    assert any(first != [i.style.name for i in _pair(folders, seed=s)] for s in range(4, 10))


def test_manifest_decides_pairs_and_styles(folders):
    _, _, edits = folders
    _png(edits / "edit_car_2.png")
    _png(edits / "custom_name.png")
    lines = [
        {"input": "car_2.png", "style": "lego_c.png", "prompt": "turn the red car into lego", "seed": 1,
         "edit": "edit_car_2.png"},
        {"input": "my_red_car_01.png", "style": "lego_b.png", "prompt": "x", "seed": 2, "edit": "custom_name.png"},
    ]
    (edits / "manifest.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    items = _pair(folders)
    assert [(i.edit.name, i.input.name, i.style.name) for i in items] == [
        ("custom_name.png", "my_red_car_01.png", "lego_b.png"),
        ("edit_car_2.png", "car_2.png", "lego_c.png"),
    ]


def test_missing_and_unlisted_edits_are_left_out_with_their_reason(folders):
    inputs, styles, edits = folders
    _png(edits / "edit_car.png")
    _png(edits / "edit_stray.png")
    lines = [{"input": "car.jpg", "style": "lego_a.png", "edit": "edit_car.png", "model": {"base": "m"}},
             {"input": "car_2.png", "style": "lego_b.png", "edit": "edit_car_2.png"}]
    (edits / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    pairing = pair_edits(edits, inputs, styles, "car", "lego", 0)
    assert [(i.edit.name, i.model) for i in pairing.items] == [("edit_car.png", {"base": "m"})]
    assert pairing.listed == 2
    assert pairing.left_out == {"edit_car_2.png": "listed in manifest.jsonl but missing",
                                "edit_stray.png": "not listed in manifest.jsonl"}


def test_manifest_naming_a_missing_file_is_a_clear_error(folders):
    _, _, edits = folders
    _png(edits / "edit_car.png")
    (edits / "manifest.jsonl").write_text(json.dumps({"input": "bus.png", "style": "lego_a.png", "edit": "edit_car.png"}))
    with pytest.raises(PairingError, match=r"line 1: input .*bus.png not found"):
        _pair(folders)


def test_edit_without_matching_input_is_a_clear_error(folders):
    _, _, edits = folders
    _png(edits / "edit_truck_7.png")
    with pytest.raises(PairingError, match=r"edit_truck_7.png has no matching input: expected truck_7.png"):
        _pair(folders)


def test_missing_and_empty_folders_are_clear_errors(folders, tmp_path):
    inputs, styles, edits = folders
    with pytest.raises(FileNotFoundError, match=r"^--config.sample_savedir: edits folder .*car_lego does not exist$"):
        _pair(folders)
    edits.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"edits folder .*car_lego holds no .jpg/.jpeg/.png"):
        _pair(folders)
    _png(edits / "edit_car.png")
    with pytest.raises(FileNotFoundError, match="style folder"):
        pair_edits(edits, inputs, tmp_path / "nowhere", "car", "lego", 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"input folder .*empty holds no"):
        pair_edits(edits, tmp_path / "empty", styles, "car", "lego", 0)


def test_corrupt_png_error_names_the_file(tmp_path):
    good = _png(tmp_path / "good.png", size=(64, 64))
    truncated = tmp_path / "edit_truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    garbage = tmp_path / "edit_garbage.png"
    garbage.write_bytes(b"not a png at all")
    for path in (truncated, garbage):
        with pytest.raises(UnreadableImageError, match=path.name):
            read_rgb(path)


def test_evaluation_decodes_transparency_like_training(tmp_path):
    """A transparent pixel is white for the trainer; evaluation must see the same pixel."""
    path = tmp_path / "cutout.png"
    image = Image.new("RGBA", (4, 4), (200, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    image.save(path)
    evaluated = image_to_tensor(read_rgb(path))
    assert torch.equal(evaluated, load_image(path))
    assert evaluated[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
