"""Grounded-SAM2 masks end to end on the tiny Grounding DINO and SAM2 loaded from disk."""

import pytest
import torch
from transformers import AutoModel, AutoModelForZeroShotObjectDetection, AutoProcessor

from editspecialists.rewards.masks import (MaskPredictor, detector_prompt, pad_boxes, per_image_names,
                                          whole_frame_masks)
from editspecialists.demo.cache import cached_build
from editspecialists.demo.feedback_standins import build_detector, build_segmenter

NAME = "red sports car"


@pytest.fixture(scope="module")
def model_ids(tiny_root):
    return (str(cached_build(tiny_root / "detector", build_detector)),
            str(cached_build(tiny_root / "segmenter", build_segmenter)))


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 48, 64, generator=torch.Generator().manual_seed(0))


def best_box_scores(detector_id, images, name):
    """Each image's highest box score, straight from the detector and its post-processing."""
    processor = AutoProcessor.from_pretrained(detector_id)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(detector_id).eval()
    inputs = processor(images=list(images), text=[detector_prompt(name)] * len(images), do_rescale=False,
                       return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    results = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.0, target_sizes=[tuple(images.shape[-2:])] * len(images))
    return torch.stack([r["scores"].max() for r in results])


def sam2_union_one_box_at_a_time(segmenter_id, image, boxes):
    """Union of SAM2's masks for ``boxes`` of one image, one model call per box."""
    processor = AutoProcessor.from_pretrained(segmenter_id)
    model = AutoModel.from_pretrained(segmenter_id).eval()
    union = torch.zeros(image.shape[-2:], dtype=torch.bool)
    for box in boxes.tolist():
        inputs = processor(images=[image], input_boxes=[[box]], do_rescale=False, return_tensors="pt")
        with torch.no_grad():
            outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                            multimask_output=False)
        union |= processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])[0].any(dim=(0, 1))
    return union


def test_prompt_names_and_box_padding_helpers():
    assert detector_prompt("  Red Sports Car ") == "red sports car."
    assert detector_prompt("car.") == "car."
    with pytest.raises(ValueError, match="non-empty"):
        detector_prompt(" . ")
    assert per_image_names("car", 3) == ["car"] * 3
    with pytest.raises(ValueError, match="2 names for 3 images"):
        per_image_names(["car", "bus"], 3)
    padded = pad_boxes([torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([[0.0, 0, 1, 1], [2.0, 2, 3, 3]])])
    assert padded == [[[1, 2, 3, 4], [1, 2, 3, 4]], [[0, 0, 1, 1], [2, 2, 3, 3]]]


def test_whole_frame_gives_all_ones_without_any_model():
    masks = whole_frame_masks(torch.rand(2, 3, 10, 12))
    assert masks.shape == (2, 10, 12) and masks.dtype == torch.bool and masks.all()


def test_batch_where_some_images_get_no_box(model_ids, images):
    detector_id, segmenter_id = model_ids
    scores = best_box_scores(detector_id, images, NAME)
    ranked = scores.sort().values
    assert ranked[1] < ranked[2], f"tiny detector scores do not separate images: {scores}"
    threshold = float(ranked[1] + ranked[2]) / 2  # two images above, two below
    predictor = MaskPredictor.from_pretrained(detector_id, segmenter_id, device="cpu", box_threshold=threshold)

    masks = predictor(images, NAME)

    assert masks.shape == (4, 48, 64) and masks.dtype == torch.bool
    boxes = predictor.detect(images, [NAME] * 4)
    with_box = [i for i in range(4) if scores[i] > threshold]
    assert [i for i in range(4) if len(boxes[i])] == with_box and len(with_box) == 2
    for i in range(4):
        if i in with_box:
            assert torch.equal(masks[i], sam2_union_one_box_at_a_time(segmenter_id, images[i], boxes[i]))
        else:
            assert masks[i].all()
    assert not masks[with_box].all(), "SAM2 masks should not cover the whole image here"


def test_masks_are_the_union_over_every_box(model_ids, images):
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu", box_threshold=0.0)
    masks = predictor(images, NAME)
    boxes = predictor.detect(images, [NAME] * len(images))
    assert all(len(image_boxes) == 10 for image_boxes in boxes)  # every query of the tiny detector
    first_box_only = torch.cat([predictor.segment(images[i : i + 1], [boxes[i][:1]]) for i in range(len(images))])
    assert (masks & ~first_box_only).any(), "further boxes should add to the first box's mask"
    for i in range(len(images)):
        assert torch.equal(masks[i], sam2_union_one_box_at_a_time(model_ids[1], images[i], boxes[i]))


def test_no_image_with_a_box_gives_whole_images(model_ids, images):
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu", box_threshold=1.0)
    assert predictor(images, NAME).all()


def test_names_per_image_are_batched_like_single_calls(model_ids, images):
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu", box_threshold=0.0)
    names = ["car", NAME, "a very small blue car", "lego"]
    batched = predictor(images, names)
    singles = torch.cat([predictor(images[i : i + 1], names[i]) for i in range(4)])
    assert torch.equal(batched, singles)
    assert not batched.all()
    assert predictor(images[:1], NAME).shape == (1, 48, 64)  # a batch of one


def test_bad_inputs_are_refused(model_ids, images):
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu")
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        predictor(images * 255, NAME)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        predictor(images[0], NAME)
    with pytest.raises(ValueError, match="2 names for 4 images"):
        predictor(images, ["car", "bus"])
