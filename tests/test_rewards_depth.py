"""Structural score (docs/method.md §4): the depth comparison by hand, and the tiny Depth Anything from disk."""

import pytest
import torch

from editspecialists.rewards.depth import DepthEstimator, align_scale_shift, depth_input_size, structural_score
from editspecialists.demo.feedback_standins import IMAGENET_MEAN, build_depth
from editspecialists.demo.cache import cached_build


@pytest.fixture(scope="module")
def depth(tiny_root):
    return DepthEstimator.from_pretrained(str(cached_build(tiny_root / "depth", build_depth)), device="cpu")


def test_input_size_short_side_reaches_target_and_sides_are_multiples_of_14():
    assert depth_input_size(256, 256, 518, 14) == (518, 518)
    assert depth_input_size(480, 640, 518, 14) == (518, 686)  # 640·518/480 = 690.7 → 49·14
    assert depth_input_size(640, 480, 518, 14) == (686, 518)
    assert depth_input_size(48, 72, 56, 14) == (56, 84)


def test_structural_score_known_answers():
    generator = torch.Generator().manual_seed(0)
    d = torch.rand(2, 5, 7, generator=generator)
    assert structural_score(d, d.clone()).tolist() == [0.0, 0.0]
    assert torch.allclose(structural_score(d, d + 0.25), torch.tensor([0.25, 0.25]))
    shifted = d.clone()
    shifted[1] = 2 * d[1] + 3
    assert structural_score(d, shifted)[0].item() == 0.0
    assert structural_score(d, shifted, align="scale_shift").abs().max().item() < 1e-5
    assert structural_score(d, shifted, align="none")[1].item() == pytest.approx((d[1] + 3).mean().item(), rel=1e-5)


def test_scale_shift_alignment_of_a_constant_edit_is_the_input_mean():
    d = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    aligned = align_scale_shift(torch.full_like(d, 7.0), d)
    assert torch.allclose(aligned, torch.full_like(d, 1.5))
    assert structural_score(d, torch.full_like(d, 7.0), align="scale_shift").item() == pytest.approx(1.0)


def test_structural_score_rejects_bad_arguments():
    d = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="align"):
        structural_score(d, d, align="median")
    with pytest.raises(ValueError, match="differ in shape"):
        structural_score(d, d[:1])


def test_preprocessing_resizes_keeping_aspect_and_normalises(depth):
    images = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 48, 72).contiguous()
    pixels = depth.preprocess(images)
    assert pixels.shape == (2, 3, 56, 84)
    assert pixels.abs().max().item() < 1e-5  # the ImageNet mean colour normalises to 0


def test_depth_is_batched_per_image_exact_and_sized_like_the_input(depth):
    images = torch.rand(3, 3, 48, 72, generator=torch.Generator().manual_seed(3))
    batched = depth(images)
    assert batched.shape == (3, 48, 72) and batched.dtype == torch.float32
    assert batched.std().item() > 1e-3  # the tiny model predicts a real, varying map
    one_by_one = torch.cat([depth(image[None]) for image in images])
    assert torch.allclose(batched, one_by_one, atol=1e-5, rtol=1e-4)


def test_depth_preprocessing_and_restoring_are_the_originals(depth):
    """The original's depth transform: bilinear (align_corners False) to the 518-lower-bound size
    (here the tiny model's 56, multiples of 14), ImageNet normalisation; the depth map back to the
    image's size bilinear with align_corners=True."""
    images = torch.rand(2, 3, 30, 50, generator=torch.Generator().manual_seed(5))
    enlarged = torch.nn.functional.interpolate(images, size=(56, 98), mode="bilinear", align_corners=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (depth.mean, depth.std))
    assert torch.equal(depth.preprocess(images), (enlarged - mean) / std)
    with torch.no_grad():
        predicted = depth.model(pixel_values=depth.preprocess(images)).predicted_depth
    expected = torch.nn.functional.interpolate(predicted[:, None], size=(30, 50), mode="bilinear", align_corners=True)
    assert torch.equal(depth(images), expected[:, 0])
    bicubic = torch.nn.functional.interpolate(predicted[:, None], size=(30, 50), mode="bicubic")
    assert (bicubic - expected).abs().max() > 1e-4, "the restoring filter is visible"


def test_identical_images_score_zero_and_different_ones_do_not(depth):
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    edited = images.clone()
    edited[1, :, 10:30, 10:30] = 1.0
    score = structural_score(depth(images), depth(edited))
    assert score[0].item() == 0.0 and score[1].item() > 1e-3


def test_depth_rejects_images_outside_the_unit_range(depth):
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        depth(torch.full((1, 3, 28, 28), 255.0))


@pytest.mark.parametrize("repo", ["depth-anything__Depth-Anything-V2-Large-hf", "depth-anything__Depth-Anything-V2-Small-hf"])
def test_the_real_dpt_preprocessor_file_gives_518_px_in_multiples_of_14(tiny_root, tmp_path, repo):
    """The stand-in with the published ``preprocessor_config.json`` (DPT, 518 px, keep_aspect_ratio,
    ensure_multiple_of 14, ImageNet statistics) in place of its shrunk one."""
    import shutil
    from pathlib import Path

    folder = tmp_path / "depth"
    shutil.copytree(cached_build(tiny_root / "depth", build_depth), folder)
    shutil.copy(Path(__file__).parent / "fixtures" / "hub" / repo / "preprocessor_config.json", folder)
    depth = DepthEstimator.from_pretrained(str(folder))
    assert (depth.short_side, depth.multiple) == (518, 14)
    assert (list(depth.mean), list(depth.std)) == (IMAGENET_MEAN, [0.229, 0.224, 0.225])
    images = torch.rand(1, 3, 64, 96)
    assert depth.preprocess(images).shape == (1, 3, 518, 784)  # 96·518/64 = 777 → 56·14
    assert depth(images).shape == (1, 64, 96)
