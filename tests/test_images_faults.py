"""Image files as phones and the wild make them: EXIF-rotated JPEGs, truncated files, images over
the pixel limit. Training, generation and evaluation decode them the same way."""

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editspecialists.data.images import MAX_IMAGE_PIXELS, UnreadableImageError, load_image_folder, read_rgb
from editspecialists.evaluation.evaluator import load_images
from editspecialists.evaluation.pairs import EvalItem
from tests.helpers import oversized_png, truncated_jpeg

RED, BLUE = (230, 20, 20), (20, 20, 230)
ROTATE_90_CLOCKWISE = 6  # EXIF Orientation: the stored pixels are shown turned 90 degrees clockwise


def sideways_jpeg(path: Path) -> Path:
    """A 40x20 (w x h) JPEG, left half red, right half blue, tagged to be shown rotated 90 degrees
    clockwise: upright it is 20x40 with red on top and blue below."""
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20], array[:, 20:] = RED, BLUE
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = ROTATE_90_CLOCKWISE
    image.save(path, quality=95, exif=exif)
    return path


def assert_red_on_top(image: torch.Tensor) -> None:
    """(3, H, W) in [0, 1]: red rows at the top, blue rows at the bottom."""
    top, bottom = image[:, 1], image[:, -2]
    assert (top[0] > 0.7).all() and (top[2] < 0.3).all()
    assert (bottom[2] > 0.7).all() and (bottom[0] < 0.3).all()


def test_exif_orientation_is_applied_in_training_and_evaluation(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = sideways_jpeg(folder / "phone.jpg")
    with Image.open(photo) as stored:
        assert stored.size == (40, 20)
    files, images = load_image_folder(folder, 20)
    assert_red_on_top(images[0])

    upright = read_rgb(photo)
    assert upright.size == (20, 40)
    item = EvalItem(edit=photo, input=photo, style=photo, prompt="p")
    scorable, decoded, left_out = load_images([item])
    assert scorable == [item] and left_out == {}
    assert decoded[photo].size == (20, 40)
    assert_red_on_top(torch.from_numpy(np.asarray(decoded[photo], dtype=np.float32) / 255).permute(2, 0, 1))


def test_exif_orientation_is_applied_in_generation(tiny_ip2p_path, tmp_path, monkeypatch):
    """The input tensors generation encodes come out upright (real loading, only recorded)."""
    from editspecialists import generation
    from tests.helpers import fault_config

    config = fault_config(tiny_ip2p_path, tmp_path)
    sideways_jpeg(Path(config.inputimg_dir) / "car_99.jpg")
    loaded = {}
    real_load_image = generation.load_image

    def recording_load_image(path, *args):
        loaded[Path(path).name] = real_load_image(path, *args)
        return loaded[Path(path).name]

    monkeypatch.setattr(generation, "load_image", recording_load_image)
    folder = generation.generate_edits(config)
    assert (folder / "edit_car_99.jpg").is_file()
    assert loaded["car_99.jpg"].shape == (3, 32, 32)
    assert_red_on_top(loaded["car_99.jpg"])


def test_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path):
    """20000x20000 is over twice the limit (Pillow itself refuses it); 9500x9500 is between the
    limit and twice it (Pillow only warns): both are refused naming the limit, without a warning
    from Pillow and without decoding 90-400 megapixels."""
    assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    huge = oversized_png(tmp_path / "huge.png", 20000, 20000)
    large = oversized_png(tmp_path / "large.png", 9500, 9500)
    assert huge.stat().st_size < 200_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnreadableImageError, match=r"huge.png: more than twice the limit of 89478485 pixels"):
            read_rgb(huge)
        with pytest.raises(UnreadableImageError, match=r"large.png: 9500x9500 pixels, more than the limit of 89478485"):
            read_rgb(large)


def test_evaluation_leaves_out_an_oversized_or_truncated_edit_naming_why(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), RED).save(good)
    huge = oversized_png(tmp_path / "edit_huge.png", 20000, 20000)
    half = truncated_jpeg(tmp_path / "edit_half.jpg")
    items = [EvalItem(edit=edit, input=good, style=good, prompt="p") for edit in (huge, half, good)]
    items.append(EvalItem(edit=tmp_path / "edit_fine.png", input=half, style=good, prompt="p"))
    Image.new("RGB", (16, 16), BLUE).save(items[-1].edit)
    scorable, decoded, left_out = load_images(items)
    assert scorable == [items[2]] and set(decoded) == {good, items[-1].edit}
    assert left_out["edit_fine.png"].startswith("its input edit_half.jpg is unreadable: OSError")
    assert left_out["edit_huge.png"].startswith("unreadable: more than twice the limit of 89478485 pixels")
    assert left_out["edit_half.jpg"].startswith("unreadable: OSError: image file is truncated")


def test_training_skips_oversized_and_truncated_files_and_keeps_the_rest(tmp_path, caplog):
    oversized_png(tmp_path / "huge.png", 20000, 20000)
    truncated_jpeg(tmp_path / "half.jpg")
    Image.new("RGB", (16, 16), RED).save(tmp_path / "good.png")
    with caplog.at_level(logging.WARNING):
        files, images = load_image_folder(tmp_path, 8, role="style image")
    assert [f.name for f in files] == ["good.png"] and images.shape == (1, 3, 8, 8)
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1 and warnings_[0].startswith("skipped 2 unreadable style image file(s)")
    assert "half.jpg (OSError: image file is truncated" in warnings_[0]
    assert "huge.png (more than twice the limit of 89478485 pixels" in warnings_[0]


def test_links_to_files_outside_an_image_folder_are_named_in_one_warning(tmp_path, caplog):
    folder, elsewhere = tmp_path / "inputs", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    Image.new("RGB", (8, 8), RED).save(folder / "inside.png")
    Image.new("RGB", (8, 8), BLUE).save(elsewhere / "outside.png")
    (folder / "linked.png").symlink_to(elsewhere / "outside.png")
    (folder / "alias.png").symlink_to(folder / "inside.png")
    with caplog.at_level(logging.WARNING):
        files, images = load_image_folder(folder, 8, role="input image")
    assert [f.name for f in files] == ["alias.png", "inside.png", "linked.png"] and len(images) == 3
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings_ == [f"1 input image file(s) in {folder} link to files outside it (used as they are): "
                         f"linked.png -> {elsewhere / 'outside.png'}"]


def test_a_large_image_read_with_a_side_limit_is_downsized_on_load(tmp_path):
    """A 6000x4000 JPEG read with max_side 1000 is decoded at a reduced scale (draft), upright,
    at most 1000 px on its longer side; its aspect is kept."""
    photo = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), RED).save(photo, quality=80)
    image = read_rgb(photo, max_side=1000)
    assert image.size == (1000, 667) and image.mode == "RGB"
    assert read_rgb(sideways_jpeg(tmp_path / "phone.jpg"), max_side=10).size == (5, 10)
