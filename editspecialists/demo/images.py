"""A small deterministic image set for the demo: simple cars on varied backgrounds, brick styles.

Drawn with PIL from a seed, so the demo and the tests need no download. The "input" images show a
toy car (body, cabin, wheels) on a sky/ground background; the "style" images show coloured brick
walls (a stand-in for "lego").
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

INPUT_NAME = "car"
STYLE_NAME = "lego"


def draw_car(rng: random.Random, size: int) -> Image.Image:
    """One input image: a car of random colour, size and position on a random two-tone scene."""
    sky = tuple(rng.randint(90, 230) for _ in range(3))
    ground = tuple(rng.randint(30, 160) for _ in range(3))
    image = Image.new("RGB", (size, size), sky)
    draw = ImageDraw.Draw(image)
    horizon = rng.randint(size // 2, 3 * size // 4)
    draw.rectangle([0, horizon, size, size], fill=ground)
    width = rng.randint(size // 3, 2 * size // 3)
    height = width // 3
    left = rng.randint(2, size - width - 2)
    bottom = min(size - 4, horizon + rng.randint(0, size // 8))
    body = tuple(rng.randint(0, 255) for _ in range(3))
    draw.rectangle([left, bottom - height, left + width, bottom - height // 3], fill=body)
    cabin = [left + width // 4, bottom - height - height // 2, left + 3 * width // 4, bottom - height]
    draw.rectangle(cabin, fill=tuple(max(0, c - 60) for c in body))
    radius = max(2, height // 3)
    for cx in (left + width // 5, left + 4 * width // 5):
        cy = bottom - height // 3
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(20, 20, 20))
    return image


def draw_bricks(rng: random.Random, size: int) -> Image.Image:
    """One style image: a wall of coloured studded bricks."""
    image = Image.new("RGB", (size, size), (40, 40, 40))
    draw = ImageDraw.Draw(image)
    palette = [tuple(rng.randint(0, 255) for _ in range(3)) for _ in range(3)]
    brick_h = rng.randint(size // 10, size // 6)
    brick_w = 2 * brick_h
    for row, top in enumerate(range(0, size, brick_h)):
        offset = (row % 2) * brick_w // 2
        for left in range(-offset, size, brick_w):
            colour = rng.choice(palette)
            draw.rectangle([left + 1, top + 1, left + brick_w - 1, top + brick_h - 1], fill=colour)
            stud = max(1, brick_h // 4)
            for sx in (left + brick_w // 4, left + 3 * brick_w // 4):
                draw.ellipse([sx - stud, top + brick_h // 2 - stud, sx + stud, top + brick_h // 2 + stud],
                             fill=tuple(min(255, c + 50) for c in colour))
    return image


def write_demo_images(folder: str | Path, num_inputs: int = 8, num_styles: int = 5,
                      size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Write ``inputs/car_XX.png`` and ``styles/lego_XX.png`` under ``folder``.

    Returns the two folders. The same arguments always give byte-identical files.
    """
    folder = Path(folder)
    inputs, styles = folder / "inputs", folder / "styles"
    inputs.mkdir(parents=True, exist_ok=True)
    styles.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(num_inputs):
        draw_car(rng, size).save(inputs / f"{INPUT_NAME}_{i:02d}.png")
    for i in range(num_styles):
        draw_bricks(rng, size).save(styles / f"{STYLE_NAME}_{i:02d}.png")
    return inputs, styles


# Seed of the held-out cars: a random stream of their own, so none is among the demo's input images
# or the demo editor's training cars (both drawn from seed 0).
HELD_OUT_SEED = 1


def write_held_out_images(folder: str | Path, num_inputs: int = 8, size: int = 64, first: int = 0) -> Path:
    """Write ``car_heldout_XX.png`` into ``folder``: demo cars the demo never trains on, for its
    held-out validation (``val.inputimg_dir``), the ``num_inputs`` cars from number ``first`` of
    their random stream. The same arguments always give the same files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(HELD_OUT_SEED)
    for i in range(first + num_inputs):
        car = draw_car(rng, size)
        if i >= first:
            car.save(folder / f"{INPUT_NAME}_heldout_{i:02d}.png")
    return folder


# The wide held-out set: cars the validation's do not include (they come next in the same stream).
WIDE_HELD_OUT = {"first": 8, "num_inputs": 96}


def write_wide_held_out_images(folder: str | Path) -> Path:
    """Write the wide held-out set (:data:`WIDE_HELD_OUT`: 96 further held-out cars, numbers 08 to
    103) into ``folder``: a comparison of base and specialist on them (``config/eval.py:demo_wide``)
    measures the population of demo cars rather than the validation's 8."""
    return write_held_out_images(folder, **WIDE_HELD_OUT)

