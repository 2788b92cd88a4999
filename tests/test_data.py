"""Image folders, the training dataset and the demo images."""

import hashlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from editspecialists.data.dataset import PROMPT_TEMPLATES, EditDataset
from editspecialists.demo.images import write_demo_images
from editspecialists.data.images import load_image, load_image_folder, resize_center_crop


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_demo_images_are_deterministic(tmp_path):
    first = write_demo_images(tmp_path / "a")
    second = write_demo_images(tmp_path / "b")
    for a, b in zip(first, second):
        assert digest(a) == digest(b) and len(digest(a)) > 0
    assert len(list(first[0].iterdir())) == 8 and len(list(first[1].iterdir())) == 5
    other = write_demo_images(tmp_path / "c", seed=1)
    assert digest(other[0]) != digest(first[0])


def test_conversions_rgba_grey_16bit_and_upscaling(tmp_path):
    Image.new("RGBA", (10, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("L", (40, 30), 128).save(tmp_path / "grey.png")
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    clear = load_image(tmp_path / "clear.png", 32)
    assert clear.shape == (3, 32, 32) and torch.allclose(clear, torch.ones_like(clear)), "transparent -> white"
    grey = load_image(tmp_path / "grey.png", 24)
    assert grey.shape == (3, 24, 24) and torch.allclose(grey, torch.full_like(grey, 128 / 255), atol=1 / 255)
    deep = load_image(tmp_path / "deep.png", 8)
    assert torch.allclose(deep, torch.ones_like(deep)), "16-bit white stays white"


def test_non_square_is_resized_on_short_side_and_centre_cropped(tmp_path):
    array = np.zeros((20, 60, 3), dtype=np.uint8)
    array[:, 20:40] = 255
    Image.fromarray(array).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", 20)
    assert image.shape == (3, 20, 20) and image.mean() > 0.95


@pytest.mark.parametrize("width, height, size", [(349, 200, 64), (150, 263, 48), (30, 20, 32)])
def test_the_training_resize_is_torchvisions_resize_and_centre_crop(tmp_path, width, height, size):
    """The original's transform, T.Compose([Resize(S), CenterCrop(S), ToTensor()]), pixel for pixel:
    349x200 to 64 makes the long side int(111.68) = 111 (not rounded to 112) and the crop offset
    round(23.5) = 24 (not 23); 30x20 to 32 enlarges."""
    from torchvision import transforms as T

    rng = np.random.default_rng(width)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    original = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor()])(Image.open(tmp_path / "photo.png"))
    ours = load_image(tmp_path / "photo.png", size)
    assert ours.shape == (3, size, size) and torch.equal(ours, original)
    bicubic = load_image(tmp_path / "photo.png", size, "bicubic")
    assert (bicubic - original).abs().max() > 10 / 255, "the bicubic option is another filter"
    with pytest.raises(ValueError, match="resize_filter must be one of"):
        resize_center_crop(Image.open(tmp_path / "photo.png"), size, "lanczos")


def test_unreadable_files_are_skipped_with_one_warning(tmp_path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    with caplog.at_level(logging.WARNING):
        files, images = load_image_folder(tmp_path, 8)
    assert [f.name for f in files] == ["good.jpg"] and images.shape == (1, 3, 8, 8)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "broken.png" in warnings[0].getMessage()


def test_empty_or_missing_or_unusable_folders_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        load_image_folder(tmp_path / "missing", 8, role="input image", key="inputimg_dir")
    assert str(caught.value) == f"--config.inputimg_dir: input image folder {tmp_path / 'missing'} does not exist"
    with pytest.raises(FileNotFoundError) as caught:
        load_image_folder(tmp_path / "missing", 8, role="input image")
    assert str(caught.value) == f"input image folder {tmp_path / 'missing'} does not exist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .jpg/.jpeg/.png"):
        load_image_folder(tmp_path / "empty", 8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no readable image"):
        load_image_folder(tmp_path / "bad", 8)


def test_dataset_prompts_styles_and_process_shards(tmp_path):
    inputs, styles = write_demo_images(tmp_path)
    dataset = EditDataset(inputs, styles, "red sports car", "lego bricks", 16)
    assert len(dataset) == 8
    shards = [dataset.epoch_batches(2, 2, torch.Generator().manual_seed(3), rank, 2) for rank in range(2)]
    seen = [name for shard in shards for batch in shard for name in batch.input_files]
    assert sorted(seen) == sorted(f.name for f in dataset.input_files), "one sweep, split across processes"
    batch = shards[0][0]
    assert batch.inputs.shape == (2, 3, 16, 16) and batch.styles.shape == (2, 3, 16, 16)
    templates = {t.format(input="red sports car", style="lego bricks") for t in PROMPT_TEMPLATES}
    assert all(prompt in templates for prompt in batch.prompts)
    again = dataset.epoch_batches(2, 2, torch.Generator().manual_seed(3), 0, 2)
    assert [b.prompts for b in again] == [b.prompts for b in shards[0]]
    assert [b.style_files for b in again] == [b.style_files for b in shards[0]]


def test_dataset_repeats_sweeps_when_an_epoch_needs_more_inputs(tmp_path):
    inputs, styles = write_demo_images(tmp_path, num_inputs=3)
    dataset = EditDataset(inputs, styles, "car", "lego", 8)
    batches = dataset.epoch_batches(4, 2, torch.Generator().manual_seed(0))
    names = [n for b in batches for n in b.input_files]
    assert len(names) == 8 and set(names) == {f.name for f in dataset.input_files}
