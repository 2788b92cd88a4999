"""Grounded-SAM2 masks end to end on the tiny Grounding DINO and SAM2 loaded from disk."""

import pytest
import torch
from transformers import AutoModelForMaskGeneration, AutoModelForZeroShotObjectDetection, AutoProcessor, Sam2Processor

from editspecialists.rewards import masks as masks_module
from editspecialists.rewards.masks import (MaskPredictor, detector_prompt, pad_boxes, per_image_names,
                                          whole_frame_masks, whole_image_box_where_none)
from editspecialists.demo.cache import cached_build
from editspecialists.demo.feedback_standins import build_detector, build_segmenter
from tests.helpers import demo_scenes

NAME = "red sports car"


@pytest.fixture(scope="module")
def model_ids(tiny_root):
    return (str(cached_build(tiny_root / "detector", build_detector)),
            str(cached_build(tiny_root / "segmenter", build_segmenter)))


@pytest.fixture(scope="module")
def images():
    return demo_scenes(4, 48, 64)[0]


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
    """Union of SAM2's masks for ``boxes`` of one image, one model call per box (the image model
    and processor of the repo, which is published as a video model)."""
    processor = Sam2Processor.from_pretrained(segmenter_id)
    model = AutoModelForMaskGeneration.from_pretrained(segmenter_id).eval()
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
    filled = whole_image_box_where_none([torch.zeros(0, 4), torch.tensor([[1.0, 2, 3, 4]])], height=48, width=64)
    assert [boxes.tolist() for boxes in filled] == [[[0, 0, 64, 48]], [[1, 2, 3, 4]]]


def test_whole_frame_gives_all_ones_without_any_model():
    masks = whole_frame_masks(torch.rand(2, 3, 10, 12))
    assert masks.shape == (2, 10, 12) and masks.dtype == torch.bool and masks.all()


WHOLE_IMAGE_BOX = torch.tensor([[0.0, 0.0, 64.0, 48.0]])  # [0, 0, W, H] of the 48 x 64 test images


@pytest.fixture(scope="module")
def split_threshold(model_ids, images):
    """A box threshold between the images' best box scores: boxes in images 0..3 where True."""
    scores = best_box_scores(model_ids[0], images, NAME)
    ranked = scores.sort().values
    assert ranked[1] < ranked[2], f"tiny detector scores do not separate images: {scores}"
    threshold = float(ranked[1] + ranked[2]) / 2  # two images above, two below
    return threshold, (scores > threshold).tolist()


def test_an_image_without_a_box_gets_sams_mask_of_the_whole_image_box(model_ids, images, split_threshold):
    detector_id, segmenter_id = model_ids
    threshold, has_box = split_threshold
    predictor = MaskPredictor.from_pretrained(detector_id, segmenter_id, device="cpu", box_threshold=threshold)

    result = predictor(images, NAME)

    masks = result.masks
    assert masks.shape == (4, 48, 64) and masks.dtype == torch.bool
    assert result.fallback.tolist() == [not found for found in has_box] and sum(has_box) == 2
    boxes, _ = predictor.detect(images, [NAME] * 4)
    assert [bool(len(image_boxes)) for image_boxes in boxes] == has_box
    for i in range(4):
        prompt = boxes[i] if has_box[i] else WHOLE_IMAGE_BOX
        assert torch.equal(masks[i], sam2_union_one_box_at_a_time(segmenter_id, images[i], prompt)), i


def test_ones_fallback_gives_all_ones_without_sam(model_ids, images, split_threshold, monkeypatch):
    threshold, has_box = split_threshold
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu", box_threshold=threshold)
    whole_box = predictor(images, NAME)
    segmented = []
    real_segment = predictor.segment
    monkeypatch.setattr(predictor, "segment", lambda batch, boxes: (segmented.append(len(batch)),
                                                                    real_segment(batch, boxes))[1])

    ones = predictor(images, NAME, fallback="ones")

    assert segmented == [2], "SAM2 runs on the two images with a box only"
    assert torch.equal(ones.fallback, whole_box.fallback)
    for i in range(4):
        assert torch.equal(ones.masks[i], whole_box.masks[i]) if has_box[i] else ones.masks[i].all()
    with pytest.raises(ValueError, match="mask fallback must be one of .*'whole_box', 'ones'.* got 'zeros'"):
        predictor(images, NAME, fallback="zeros")


@pytest.mark.parametrize("boxes_per_call", [16, 3])  # the tiny detector's 10 boxes in one call, or in 4
def test_masks_are_the_union_over_every_box(model_ids, images, monkeypatch, boxes_per_call):
    monkeypatch.setattr(masks_module, "BOXES_PER_CALL", boxes_per_call)
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu", box_threshold=0.0)
    result = predictor(images, NAME)
    masks = result.masks
    assert not result.fallback.any()
    boxes, _ = predictor.detect(images, [NAME] * len(images))
    assert all(len(image_boxes) == 10 for image_boxes in boxes)  # every query of the tiny detector
    first_box_only = torch.cat([predictor.segment(images[i : i + 1], [boxes[i][:1]]) for i in range(len(images))])
    assert (masks & ~first_box_only).any(), "further boxes should add to the first box's mask"
    for i in range(len(images)):
        assert torch.equal(masks[i], sam2_union_one_box_at_a_time(model_ids[1], images[i], boxes[i]))


def test_no_image_with_a_box_falls_back_everywhere(model_ids, images):
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu", box_threshold=1.0)
    whole_box = predictor(images, NAME)
    assert whole_box.fallback.all()
    assert torch.equal(whole_box.masks, predictor.segment(images, [WHOLE_IMAGE_BOX] * len(images)))
    ones = predictor(images, NAME, fallback="ones")
    assert ones.fallback.all() and ones.masks.all()


def test_names_per_image_are_batched_like_single_calls(model_ids, images):
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu", box_threshold=0.0)
    names = ["car", NAME, "a very small blue car", "lego"]
    batched = predictor(images, names).masks
    singles = torch.cat([predictor(images[i : i + 1], names[i]).masks for i in range(4)])
    assert torch.equal(batched, singles)
    assert not batched.all()
    assert predictor(images[:1], NAME).masks.shape == (1, 48, 64)  # a batch of one


def test_bad_inputs_are_refused(model_ids, images):
    predictor = MaskPredictor.from_pretrained(*model_ids, device="cpu")
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        predictor(images * 255, NAME)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        predictor(images[0], NAME)
    with pytest.raises(ValueError, match="2 names for 4 images"):
        predictor(images, ["car", "bus"])
