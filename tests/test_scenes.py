"""The ground truth of the demo's drawings (car box, scene depth) and the scene sampler."""

import pytest
import torch

from editspecialists.demo.feedback_training import gaussian_blur
from editspecialists.demo.scenes import (VANISHING_LINE_ABOVE_HORIZON, car_box, car_mask, demo_training_images,
                                         edit_examples, horizon_row, image_tensor, sample_edit_pairs, sample_scenes,
                                         scene_depth)


def scenes(count=6, seed=3):
    cars, walls = demo_training_images(num_cars=count, num_walls=2, seed=seed)
    return [image_tensor(car) for car in cars], walls


def test_the_car_box_holds_the_car_mask_exactly():
    for scene in scenes()[0]:
        mask = car_mask(scene)[0]
        x0, y0, x1, y1 = car_box(mask[None]).long().tolist()
        assert mask[y0:y1, x0:x1].sum() == mask.sum()
        assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any() and mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()


def test_scene_depth_sky_far_ground_nearer_downwards_car_at_its_lowest_row():
    for scene in scenes()[0]:
        depth, mask = scene_depth(scene)[0], car_mask(scene)[0].bool()
        height = scene.shape[-2]
        horizon = horizon_row(scene)
        assert 0 < horizon < height and (scene[:, horizon, 0] != scene[:, 0, 0]).any()
        column = depth[:, 0]  # column 0 never shows the car
        assert (column[:horizon] == 0).all()
        steps = column[horizon:].diff()
        assert torch.allclose(steps, steps[0].expand_as(steps)) and steps[0] > 0  # linear, nearer downwards
        vanishing = horizon - VANISHING_LINE_ABOVE_HORIZON * height
        assert column[-1].item() == pytest.approx((height - 0.5 - vanishing) / (height - vanishing))
        lowest = mask.nonzero()[:, 0].max()
        assert torch.allclose(depth[mask], column[lowest].expand(int(mask.sum())))
        assert column[horizon] > 0.3  # the ground's far edge is nearer than the sky


def test_sampled_scenes_flip_boxes_masks_and_depths_together():
    cars, walls = demo_training_images(num_cars=8, num_walls=2, seed=1)
    examples = edit_examples(cars, walls, 32)
    sampled = sample_scenes(examples, 16, torch.Generator().manual_seed(0))
    for mask, box, depth, image in zip(sampled.masks, sampled.boxes, sampled.depths, sampled.inputs):
        rows, columns = (mask[0] > 0).nonzero(as_tuple=True)
        x0, y0, x1, y1 = (box * 32).tolist()
        assert x0 - 1 <= columns.min() and columns.max() <= x1 and y0 - 1 <= rows.min() and rows.max() <= y1
        assert torch.equal(depth[0, :, 0], depth[0, :, -1])  # the car never reaches either edge
    inputs, targets = sample_edit_pairs(examples, 16, torch.Generator().manual_seed(0))
    assert torch.equal(inputs, sampled.inputs) and torch.equal(targets, sampled.targets)


def test_gaussian_blur_keeps_the_mean_and_leaves_sigma_zero_alone():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur(images, torch.tensor([0.0, 1.0, 3.0]))
    assert torch.equal(blurred[0], images[0])
    assert torch.allclose(blurred.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.02)
    assert blurred[2].std() < blurred[1].std() < images[1].std()
