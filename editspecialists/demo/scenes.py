"""Demo scenes with the ground truth their generator knows, as training material.

The demo's drawings (:mod:`editspecialists.demo.images`) are simple enough that the car's mask,
its box and a depth of the scene follow from the pixels; an edit target ("the car turned into
lego") is the scene with the car's pixels taken from a brick wall. The demo editor and the
feedback stand-ins both train on this material. Images are float tensors in [0, 1].
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from editspecialists.demo.images import draw_bricks, draw_car


DEMO_RESOLUTION = 32  # side in pixels of the images the demo trains on (config/demo.py's data_resize)
# The drawn horizon is the far edge of a flat ground whose vanishing line lies this fraction of the
# image height above it (so the ground's far edge is nearer than the sky: see scene_depth).
VANISHING_LINE_ABOVE_HORIZON = 0.25


@dataclass
class EditExamples:
    """Training material at one resolution, pixel values in [0, 1], with the scenes' ground truth.

    cars: [N, 3, R, R]; car_masks: [N, 1, R, R] (soft, 1 on the car); car_boxes: [N, 4] xyxy in
    fractions of the image side; depths: [N, 1, R, R] (:func:`scene_depth`); walls: [M, 3, R, R].
    """

    cars: torch.Tensor
    car_masks: torch.Tensor
    car_boxes: torch.Tensor
    depths: torch.Tensor
    walls: torch.Tensor


@dataclass
class Scenes:
    """Sampled scenes at resolution R: inputs and edit targets [B, 3, R, R], the car masks and
    depths [B, 1, R, R] and boxes [B, 4] (as in :class:`EditExamples`) of both."""

    inputs: torch.Tensor
    targets: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    depths: torch.Tensor


def demo_training_images(num_cars: int = 64, num_walls: int = 16, size: int = 64,
                         seed: int = 0) -> tuple[list[Image.Image], list[Image.Image]]:
    """Cars and brick walls drawn like :func:`write_demo_images` (cars first, from one seeded rng).

    With the same seed, the first cars are the demo's input images.
    """
    rng = random.Random(seed)
    cars = [draw_car(rng, size) for _ in range(num_cars)]
    walls = [draw_bricks(rng, size) for _ in range(num_walls)]
    return cars, walls


def image_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image → [3, H, W] float tensor in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def car_mask(car: torch.Tensor) -> torch.Tensor:
    """[3, H, W] demo car image → [1, H, W] float mask, 1 where a pixel belongs to the car.

    A demo scene is uniform along each row (sky above the horizon, ground below) and the car never
    touches column 0, so a pixel is the car's exactly when it differs from its row's first pixel.
    """
    return (car != car[:, :, :1]).any(dim=0, keepdim=True).float()


def car_box(mask: torch.Tensor) -> torch.Tensor:
    """[1, H, W] car mask (:func:`car_mask`) → [4] box ``x0, y0, x1, y1`` in pixels: the pixel
    edges around the car (``x1 - x0`` is its width in pixels)."""
    rows, columns = mask[0].nonzero(as_tuple=True)
    return torch.stack([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]).float()


def horizon_row(scene: torch.Tensor) -> int:
    """First ground row of a [3, H, W] demo scene (H if its ground has the sky's colour)."""
    edge = scene[:, :, 0]  # column 0 never shows the car
    changed = (edge != edge[:, :1]).any(dim=0).nonzero()
    return int(changed[0]) if len(changed) else scene.shape[-2]


def ground_disparity(rows: torch.Tensor, horizon: int, height: int) -> torch.Tensor:
    """Disparity (1 / distance, relative) of the flat ground at pixel ``rows`` (float, pixel
    centres at ``row + 0.5``): linear in the row, 0 at the vanishing line that lies
    :data:`VANISHING_LINE_ABOVE_HORIZON` of the height above ``horizon``, 1 at the bottom edge."""
    vanishing = horizon - VANISHING_LINE_ABOVE_HORIZON * height
    return (rows + 0.5 - vanishing) / (height - vanishing)


def scene_depth(scene: torch.Tensor) -> torch.Tensor:
    """[3, H, W] demo scene → [1, H, W] relative disparity (larger = nearer, as Depth Anything).

    The sky is infinitely far (0); the ground comes nearer linearly from the horizon down
    (:func:`ground_disparity`, about 0.3-0.5 at the horizon, 1 at the bottom); the car stands on
    the ground, all of it at the disparity of its lowest pixel row.
    """
    height, width = scene.shape[-2:]
    horizon = horizon_row(scene)
    rows = torch.arange(height, dtype=torch.float32)
    column = torch.where(rows >= horizon, ground_disparity(rows, horizon, height), torch.zeros(()))
    depth = column[:, None].expand(height, width).clone()
    car = car_mask(scene)[0].bool()
    if car.any():
        lowest = car.nonzero()[:, 0].max().float()
        depth[car] = ground_disparity(lowest, horizon, height)
    return depth[None]


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """[N, C, H, W] → [N, C, resolution, resolution] by area averaging (soft mask edges)."""
    return F.interpolate(images, size=(resolution, resolution), mode="area")


def edit_examples(cars: Sequence[Image.Image], walls: Sequence[Image.Image],
                  resolution: int) -> EditExamples:
    """Tensors of the cars (with their ground truth, computed at full size) and walls at ``resolution``."""
    full_cars = torch.stack([image_tensor(car) for car in cars])
    masks = torch.stack([car_mask(car) for car in full_cars])
    boxes = torch.stack([car_box(mask) for mask in masks]) / full_cars.shape[-1]
    depths = torch.stack([scene_depth(car) for car in full_cars])
    full_walls = torch.stack([image_tensor(wall) for wall in walls])
    return EditExamples(resize(full_cars, resolution), resize(masks, resolution), boxes,
                        resize(depths, resolution), resize(full_walls, resolution))


def coin_flips(count: int, generator: torch.Generator, probability: float = 0.5) -> torch.Tensor:
    """[count] bool, each True with ``probability``."""
    return torch.rand(count, generator=generator) < probability


def flip_where(images: torch.Tensor, flip: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Images of [N, C, H, W] flipped along ``dim`` where ``flip`` ([N] bool)."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(dim), images)


def random_flips(images: torch.Tensor, generator: torch.Generator, vertical: bool = False) -> torch.Tensor:
    """Flip each image of [N, C, H, W] left-right (and up-down if ``vertical``) with probability 1/2."""
    images = flip_where(images, coin_flips(len(images), generator))
    if vertical:
        images = flip_where(images, coin_flips(len(images), generator), dim=-2)
    return images


def random_wall_patterns(walls: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` walls drawn with replacement, randomly flipped and cyclically shifted: [count, 3, R, R]."""
    chosen = walls[torch.randint(len(walls), (count,), generator=generator)]
    chosen = random_flips(chosen, generator, vertical=True)
    size = chosen.shape[-1]
    shifts = torch.randint(size, (count, 2), generator=generator).tolist()
    return torch.stack([wall.roll(shift, dims=(-2, -1)) for wall, shift in zip(chosen, shifts)])


def sample_scenes(examples: EditExamples, count: int, generator: torch.Generator) -> Scenes:
    """``count`` randomly flipped cars and their edit targets: the same scene with the car's pixels
    taken from a random wall pattern (soft mask edges blend the two)."""
    index = torch.randint(len(examples.cars), (count,), generator=generator)
    flip = coin_flips(count, generator)
    layers = torch.cat([examples.cars[index], examples.car_masks[index], examples.depths[index]], dim=1)
    inputs, masks, depths = flip_where(layers, flip).split([3, 1, 1], dim=1)
    boxes = examples.car_boxes[index]
    boxes = torch.where(flip[:, None], torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1),
                        boxes)
    walls = random_wall_patterns(examples.walls, count, generator)
    return Scenes(inputs, masks * walls + (1 - masks) * inputs, masks, boxes, depths)


def sample_edit_pairs(examples: EditExamples, count: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` (input, target) pairs of :func:`sample_scenes`, each [count, 3, R, R] in [0, 1]."""
    scenes = sample_scenes(examples, count, generator)
    return scenes.inputs, scenes.targets
