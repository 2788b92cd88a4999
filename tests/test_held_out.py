"""The held-out inputs: chosen by file name, stable when files are added, never trained on."""

import pytest

from editspecialists.data.dataset import EditDataset
from editspecialists.data.held_out import held_out_inputs, name_fraction, split_by_name
from editspecialists.demo.images import write_demo_images


def test_a_file_is_held_out_by_its_name_alone_and_about_the_fraction_are():
    names = [f"photo_{i:04d}.jpg" for i in range(2000)]
    train, held = split_by_name(names, 0.1)
    assert sorted(train + held) == sorted(names) and not set(train) & set(held)
    assert 150 < len(held) < 250  # binomial(2000, 0.1): mean 200, std 13.4
    more_train, more_held = split_by_name(names + [f"new_{i}.png" for i in range(500)], 0.1)
    assert set(held) <= set(more_held) and set(train) <= set(more_train)
    assert all(name_fraction(name) < 0.1 for name in held)
    assert name_fraction("car_00.png") == name_fraction("car_00.png") != name_fraction("car_01.png")


def test_the_split_is_left_out_of_training(tmp_path):
    inputs, styles = write_demo_images(tmp_path, num_inputs=12, size=32)
    held_out, reason = held_out_inputs(inputs, "", 0.3)
    names = sorted(path.name for path in inputs.iterdir())
    assert reason == "" and held_out.source == "val.fraction" and held_out.folder == inputs
    assert held_out.files == split_by_name(names, 0.3)[1] and 0 < len(held_out.files) < 12
    assert held_out.excluded_from_training == frozenset(held_out.files)
    dataset = EditDataset(inputs, styles, "car", "lego", 32, exclude=held_out.excluded_from_training)
    trained = [path.name for path in dataset.input_files]
    assert sorted(trained + held_out.files) == names and not set(trained) & set(held_out.files)


def test_a_held_out_folder_of_its_own_is_used_whole_and_must_hold_images(tmp_path):
    inputs, _ = write_demo_images(tmp_path / "train", num_inputs=3, size=32)
    held, _ = write_demo_images(tmp_path / "held", num_inputs=2, size=32)
    held_out, reason = held_out_inputs(inputs, held, 0.5)
    assert held_out.files == ["car_00.png", "car_01.png"] and held_out.excluded_from_training == frozenset()
    assert held_out.source == "val.inputimg_dir" and reason == ""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="held-out input image .*val.inputimg_dir.* holds no"):
        held_out_inputs(inputs, tmp_path / "empty", 0.1)
    with pytest.raises(ValueError, match="--config.val.inputimg_dir: .* is the training folder"):
        held_out_inputs(inputs, inputs, 0.1)


def test_too_few_inputs_to_split_turn_validation_off_saying_why(tmp_path):
    inputs, _ = write_demo_images(tmp_path, num_inputs=2, size=32)
    names = sorted(path.name for path in inputs.iterdir())
    fraction = min(name_fraction(name) for name in names) / 2  # holds out none of them
    held_out, reason = held_out_inputs(inputs, "", fraction)
    assert held_out is None
    assert f"of the 2 inputs of {inputs} holds out 0, leaving 2" in reason and "val.inputimg_dir" in reason
    everything = max(name_fraction(name) for name in names) + 1e-9  # holds out both
    assert held_out_inputs(inputs, "", everything)[0] is None
    assert held_out_inputs(inputs, "", 0.0) == (None, "no held-out inputs (val.fraction is 0 and "
                                                      "val.inputimg_dir is empty)")


def test_the_wide_held_out_set_continues_the_validation_cars_stream_without_repeating_one(tmp_path):
    """config/eval.py:demo_wide compares on cars 08 to 103 of the held-out stream: the validation's
    8 are its first cars, so no image is in both, nor among the demo's training inputs."""
    import numpy as np
    from PIL import Image

    from editspecialists.demo.images import write_held_out_images, write_wide_held_out_images

    wide = write_wide_held_out_images(tmp_path / "wide")
    validation = write_held_out_images(tmp_path / "validation")
    stream = write_held_out_images(tmp_path / "stream", num_inputs=12)
    inputs, _ = write_demo_images(tmp_path / "demo")
    names = [f"car_heldout_{i:02d}.png" for i in range(8, 104)]
    assert sorted(path.name for path in wide.iterdir()) == sorted(names)
    pixels = lambda path: np.asarray(Image.open(path)).tobytes()
    for name in names[:4]:
        assert pixels(wide / name) == pixels(stream / name), name
    others = {pixels(path) for folder in (validation, inputs) for path in folder.iterdir()}
    assert len(others) == 16 and not others & {pixels(wide / name) for name in names}
