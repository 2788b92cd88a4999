"""Brief supervised training that gives the feedback stand-ins meaning in the demo's image domain.

Each stand-in is trained through the production code that reads it (the same preprocessing and
the same outputs) on demo scenes at :data:`~editspecialists.demo.scenes.DEMO_RESOLUTION`, with the
ground truth the drawings carry (:mod:`editspecialists.demo.scenes`):

- detector (Grounding DINO): for the right name ("car." on a scene, "lego." on a brick wall) every
  query's box and every encoder proposal's box go to the true box (the car's; a wall's is the
  whole image) and the logits of the name's tokens to 1; for the wrong name every logit goes to 0.
- segmenter (SAM2, single-mask output as :class:`~editspecialists.rewards.masks.MaskPredictor`
  reads it): the car's mask from a jittered car box (the detector's box is not exact); a whole
  wall from the whole-image box.
- depth (Depth Anything): the scene depth of :func:`~editspecialists.demo.scenes.scene_depth` for
  the scene and for edits of it (the car's pixels more or less turned into bricks: an edit keeps
  the depth), and a flat wall where bricks cover the scene beyond the car; blur blurs the depth
  alike, colour shifts and noise leave it.
- patch embedder (DreamSim's): the cosine similarity of every patch token to brick-wall patch
  tokens goes to 1 for bricks (any palette, in a wall or pasted into a scene), to -1 for the car
  and the background, in between for faded bricks (:func:`brick_contrast`).

Edits and scenes are degraded as the demo editor's outputs are (blur, colour shifts, noise).
Everything is seeded; run on one thread (:func:`~editspecialists.demo.fitting.torch_threads`) the
same arguments give the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from editspecialists.data.images import resize_center_crop
from editspecialists.demo.fitting import fit
from editspecialists.demo.scenes import (DEMO_RESOLUTION, EditExamples, Scenes, coin_flips, demo_training_images,
                                         edit_examples, image_tensor, random_wall_patterns, sample_scenes)
from editspecialists.rewards.masks import detector_inputs, segmenter_inputs

INPUT_NAME, STYLE_NAME = "car", "lego"
# Disparity of a brick wall standing in front of a demo scene: nearer than the horizon (about
# 0.3-0.5) and most cars, so a wall where the sky or the far ground was changes the depth.
WALL_DISPARITY = 0.8
REFERENCE_PATCHES = 256  # brick patches each patch is compared with in the patch embedders' loss


@dataclass
class TrainingSettings:
    """Steps, batch size and learning rate of one stand-in's training."""

    steps: int
    batch_size: int
    learning_rate: float


def training_examples(seed: int, num_cars: int = 256, num_walls: int = 64) -> EditExamples:
    """Demo cars and brick walls drawn from ``seed`` with their ground truth, at the demo's
    resolution: the images resized as the dataset reads files (bicubic), the masks and depths by
    area."""
    cars, walls = demo_training_images(num_cars=num_cars, num_walls=num_walls, seed=seed)
    as_read = lambda images: torch.stack([image_tensor(resize_center_crop(image, DEMO_RESOLUTION)) for image in images])
    return replace(edit_examples(cars, walls, DEMO_RESOLUTION), cars=as_read(cars), walls=as_read(walls))


def uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """[count] floats drawn uniformly from [low, high)."""
    return low + (high - low) * torch.rand(count, generator=generator)


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Each image of [N, C, H, W] blurred by a Gaussian of standard deviation ``sigmas[i]`` pixels
    (reflected edges); a sigma below 0.1 leaves the image as it is."""
    blurred = []
    for image, sigma in zip(images, sigmas.tolist()):
        if sigma < 0.1:
            blurred.append(image)
            continue
        radius = min(math.ceil(3 * sigma), image.shape[-1] - 1)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum()).to(image)
        padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
        channels = image.shape[0]
        rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        blurred.append(F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)[0])
    return torch.stack(blurred)


def colour_shift(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image, per-channel gain ``1 ± strength`` and offset ``± strength / 2``, clamped to [0, 1]."""
    shape = (len(images), images.shape[1], 1, 1)
    gain = 1 + strength * (2 * torch.rand(shape, generator=generator) - 1)
    offset = strength / 2 * (2 * torch.rand(shape, generator=generator) - 1)
    return (images * gain + offset).clamp(0, 1)


def add_noise(images: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian pixel noise of standard deviation up to ``level`` (per image), clamped to [0, 1]."""
    std = uniform(len(images), 0, level, generator).view(-1, 1, 1, 1)
    return (images + std * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def brick_regions(scenes: Scenes, generator: torch.Generator) -> torch.Tensor:
    """[B, 1, R, R] how much of each pixel an editor turned into bricks: the car mask, for half of
    the scenes faded by a random factor in [0.2, 1], for half cut at a random column (one side kept)."""
    size = scenes.masks.shape[-1]
    fade = torch.where(coin_flips(len(scenes.masks), generator), uniform(len(scenes.masks), 0.2, 1.0, generator),
                       torch.ones(())).view(-1, 1, 1, 1)
    cut = torch.randint(size, (len(scenes.masks), 1, 1, 1), generator=generator)
    columns = torch.arange(size).view(1, 1, 1, -1)
    partial = coin_flips(len(scenes.masks), generator).view(-1, 1, 1, 1)
    kept = torch.where(partial, (columns < cut).float(), torch.ones(()))
    return scenes.masks * fade * kept


def random_rectangles(count: int, smallest: int, largest: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 1, size, size] masks, each of one axis-aligned rectangle with sides drawn from
    [smallest, largest] pixels, placed anywhere in the image."""
    sides = torch.randint(smallest, largest + 1, (count, 2), generator=generator)
    corners = (torch.rand(count, 2, generator=generator) * (size - sides + 1)).long()
    positions = torch.arange(size)
    rows = (positions >= corners[:, :1]) & (positions < (corners + sides)[:, :1])
    columns = (positions >= corners[:, 1:]) & (positions < (corners + sides)[:, 1:])
    return (rows[:, :, None] & columns[:, None, :]).float()[:, None]


# ---------------------------------------------------------------------------------------------
# Depth


def car_removed(scenes: Scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, depths [B, 1, R, R]) of the scenes without their cars: each car pixel takes its
    row's background, which column 0 shows (a demo car never reaches it)."""
    background = scenes.inputs[..., :1].expand_as(scenes.inputs)
    return scenes.masks * background + (1 - scenes.masks) * scenes.inputs, scenes.depths[..., :1].expand_as(scenes.depths)


def walls_in_front(images: torch.Tensor, depths: torch.Tensor, walls: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, depths) of the scenes with a brick wall standing in front of part of each: a random
    rectangle of 8 pixels to the whole image, at disparity :data:`WALL_DISPARITY`, faded by a random
    factor in [0.3, 1] in the image and the depth alike (bricks faintly drawn, faintly a wall)."""
    size = images.shape[-1]
    where = random_rectangles(len(images), 8, size, size, generator)
    where = where * uniform(len(images), 0.3, 1.0, generator).view(-1, 1, 1, 1)
    return images + where * (walls - images), depths + where * (WALL_DISPARITY - depths)


def depth_batch(examples: EditExamples, batch_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [B, 3, R, R], target depths [B, R, R], car masks [B, R, R]): scenes (15%), editor-like
    edits of them (40%; an edit keeps the scene's depth), the scenes without their cars (15%) and
    edits with a brick wall in front of part of the scene or all of it (30%,
    :func:`walls_in_front`: bricks beyond the car are a wall, not the scene); blurred by up to 3 px
    (the depth alike), colour-shifted and noised."""
    scenes = sample_scenes(examples, batch_size, generator)
    edits = scenes.inputs + brick_regions(scenes, generator) * (scenes.targets - scenes.inputs)
    empty, empty_depths = car_removed(scenes)
    walled, walled_depths = walls_in_front(edits, scenes.depths, random_wall_patterns(examples.walls, batch_size, generator),
                                           generator)
    kind = torch.rand(batch_size, generator=generator).view(-1, 1, 1, 1)
    images = torch.where(kind < 0.4, edits, torch.where(kind < 0.55, scenes.inputs, torch.where(kind < 0.7, empty, walled)))
    depths = torch.where(kind < 0.55, scenes.depths, torch.where(kind < 0.7, empty_depths, walled_depths))
    sigmas = uniform(batch_size, 0.0, 3.0, generator) * coin_flips(batch_size, generator, 0.5)
    images = add_noise(colour_shift(gaussian_blur(images, sigmas), 0.2, generator), 0.03, generator)
    return images, gaussian_blur(depths, sigmas)[:, 0], scenes.masks[:, 0]


def train_depth(estimator, examples: EditExamples, settings: TrainingSettings,
                generator: torch.Generator) -> list[float]:
    """Train ``estimator.model`` (a :class:`~editspecialists.rewards.depth.DepthEstimator`'s) in
    place: L1 of :meth:`~editspecialists.rewards.depth.DepthEstimator.depth` to the scene depth,
    5 times heavier where the car is (or was): a small region, but what an edit must keep."""

    def loss(step: int) -> torch.Tensor:
        images, depths, cars = depth_batch(examples, settings.batch_size, generator)
        return ((estimator.depth(images) - depths).abs() * (1 + 4 * cars)).mean()

    return fit(estimator.model, "feedback stand-in: depth", loss, steps=settings.steps,
               learning_rate=settings.learning_rate)


# ---------------------------------------------------------------------------------------------
# Detector

WHOLE_IMAGE_BOX = torch.tensor([0.0, 0.0, 1.0, 1.0])  # xyxy, fractions of the image side


@dataclass
class DetectionBatch:
    """Images [B, 3, R, R]; one name each; ``positive`` [B] bool: the name is what the image
    shows; boxes [B, 4] xyxy in fractions of the image side (the true object's)."""

    images: torch.Tensor
    names: list[str]
    positive: torch.Tensor
    boxes: torch.Tensor


def detection_batch(examples: EditExamples, batch_size: int, generator: torch.Generator) -> DetectionBatch:
    """Three quarters scenes (a car), a quarter brick walls; each named rightly with probability 3/4."""
    cars = (3 * batch_size) // 4
    scenes = sample_scenes(examples, cars, generator)
    walls = random_wall_patterns(examples.walls, batch_size - cars, generator)
    images = torch.cat([scenes.inputs, walls])
    boxes = torch.cat([scenes.boxes, WHOLE_IMAGE_BOX.expand(batch_size - cars, 4)])
    is_car = torch.arange(batch_size) < cars
    positive = coin_flips(batch_size, generator, 0.75)
    names = [INPUT_NAME if car == right else STYLE_NAME for car, right in zip(is_car.tolist(), positive.tolist())]
    return DetectionBatch(images, names, positive, boxes)


def phrase_token_targets(input_ids: torch.Tensor, positive: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length] float: 1 on the name's own tokens (not [CLS], [SEP], '.', padding) of the
    images whose name is right, 0 elsewhere."""
    special = torch.tensor([0, 101, 102, 1012])  # [PAD], [CLS], [SEP], '.' in BERT's vocabulary
    phrase = ~torch.isin(input_ids, special) & positive[:, None]
    targets = torch.zeros(len(input_ids), length)
    targets[:, : input_ids.shape[1]] = phrase.float()
    return targets


def corners_to_center(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] xyxy → cx, cy, w, h."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def encoder_token_centres(config, image_size: int) -> torch.Tensor:
    """[T, 2] centres (x, y, fractions of the image side) of Grounding DINO's encoder tokens, in
    their flattened order: the backbone's output levels (Swin stage ``i`` has stride
    ``patch_size · 2^(i-1)``), then the extra levels (each halving the last), row-major."""
    backbone = config.backbone_config
    strides = [backbone.patch_size * 2 ** (index - 1) for index in backbone.out_indices]
    strides += [strides[-1] * 2 ** (level + 1) for level in range(config.num_feature_levels - len(strides))]
    centres = []
    for stride in strides:
        side = math.ceil(image_size / stride)
        positions = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        y, x = torch.meshgrid(positions, positions, indexing="ij")
        centres.append(torch.stack([x.flatten(), y.flatten()], dim=-1))
    return torch.cat(centres)


def inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: points [T, 2] (x, y) strictly inside boxes [B, 4] xyxy."""
    x, y = points[None, :, 0], points[None, :, 1]
    return (x > boxes[:, :1]) & (x < boxes[:, 2:3]) & (y > boxes[:, 1:2]) & (y < boxes[:, 3:4])


def token_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE of logits [..., L] (-inf past the text) to targets of the same shape, over finite logits."""
    finite = torch.isfinite(logits)
    return F.binary_cross_entropy_with_logits(logits[finite], targets[finite])


def detection_loss(outputs, input_ids: torch.Tensor, batch: DetectionBatch, centres: torch.Tensor) -> torch.Tensor:
    """Supervises every output Grounding DINO selects boxes by, the one object of each image
    being known: the decoder's queries (all of them) and the encoder's tokens whose centres
    [T, 2] lie inside the true box (the query selection should pick those).

    Token logits go to :func:`phrase_token_targets` (0 for a wrong name or a token outside). For
    right names every query's box and every inside token's box go to the true box: mean L1 of
    (cx, cy, w, h) per image, × 5.
    """
    phrase = phrase_token_targets(input_ids, batch.positive, outputs.logits.shape[-1])  # (B, L)
    on_object = inside(centres, batch.boxes)  # (B, T)
    query_classes = token_bce(outputs.logits, phrase[:, None].expand_as(outputs.logits))
    token_targets = phrase[:, None] * on_object[..., None]
    token_classes = token_bce(outputs.enc_outputs_class, token_targets.expand_as(outputs.enc_outputs_class))
    truth = corners_to_center(batch.boxes)[:, None]
    positive = batch.positive
    query_boxes = 5 * (outputs.pred_boxes - truth).abs()[positive].mean()
    token_errors = 5 * (outputs.enc_outputs_coord_logits.sigmoid() - truth).abs().mean(-1)  # (B, T)
    located = on_object & positive[:, None]
    token_boxes = ((token_errors * located).sum(1) / located.sum(1).clamp_min(1)).sum() / positive.sum().clamp_min(1)
    return query_classes + token_classes + query_boxes + token_boxes


def train_detector(model, processor, examples: EditExamples, settings: TrainingSettings,
                   generator: torch.Generator) -> list[float]:
    """Train a Grounding DINO in place on :func:`detection_batch` es through the processor as
    :func:`~editspecialists.rewards.masks.detector_inputs` prepares them."""

    centres = encoder_token_centres(model.config, processor.image_processor.size["shortest_edge"])

    def loss(step: int) -> torch.Tensor:
        batch = detection_batch(examples, settings.batch_size, generator)
        inputs = detector_inputs(processor, batch.images, batch.names)
        return detection_loss(model(**inputs), inputs["input_ids"], batch, centres)

    return fit(model, "feedback stand-in: detector", loss, steps=settings.steps,
               learning_rate=settings.learning_rate)


# ---------------------------------------------------------------------------------------------
# Segmenter


def jittered_boxes(boxes: torch.Tensor, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """Boxes [B, 4] xyxy with each side moved by up to ``jitter`` of the box's width or height."""
    sizes = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + jitter * sizes * (2 * torch.rand(boxes.shape, generator=generator) - 1)


def segmentation_batch(examples: EditExamples, batch_size: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [B, 3, R, R], boxes [B, 4] xyxy in pixels, masks [B, R, R]): three quarters scenes
    with their car box jittered by up to 10 %, a quarter walls with the whole-image box."""
    size = examples.cars.shape[-1]
    cars = (3 * batch_size) // 4
    scenes = sample_scenes(examples, cars, generator)
    walls = random_wall_patterns(examples.walls, batch_size - cars, generator)
    boxes = torch.cat([jittered_boxes(scenes.boxes, 0.1, generator), WHOLE_IMAGE_BOX.expand(batch_size - cars, 4)])
    masks = torch.cat([scenes.masks[:, 0], torch.ones(batch_size - cars, size, size)])
    return torch.cat([scenes.inputs, walls]), boxes.clamp(0, 1) * size, masks


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice loss of low-resolution mask logits [B, h, w], bilinearly upsampled, against
    soft masks [B, R, R]."""
    logits = F.interpolate(logits[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    probabilities = logits.sigmoid().flatten(1)
    overlap = (probabilities * masks.flatten(1)).sum(1)
    dice = 1 - (2 * overlap + 1) / (probabilities.sum(1) + masks.flatten(1).sum(1) + 1)
    return F.binary_cross_entropy_with_logits(logits, masks) + dice.mean()


def train_segmenter(model, processor, examples: EditExamples, settings: TrainingSettings,
                    generator: torch.Generator) -> list[float]:
    """Train a SAM2 image model in place: its single-mask output for a box prompt (inputs as
    :func:`~editspecialists.rewards.masks.segmenter_inputs` prepares them) to the object's mask."""

    def loss(step: int) -> torch.Tensor:
        images, boxes, masks = segmentation_batch(examples, settings.batch_size, generator)
        inputs = segmenter_inputs(processor, images, [box[None] for box in boxes])
        # the image is encoded once for both decoder calls; get_image_embeddings itself runs without grad
        embeddings = type(model).get_image_embeddings.__wrapped__(model, inputs["pixel_values"])
        single, multiple = (model(image_embeddings=embeddings, input_boxes=inputs["input_boxes"],
                                  multimask_output=multimask).pred_masks[:, 0] for multimask in (False, True))
        logits = torch.cat([single, multiple], dim=1)  # (B, 4, h, w): every output the model may return
        return segmentation_loss(logits.flatten(0, 1), masks.repeat_interleave(logits.shape[1], dim=0))

    return fit(model, "feedback stand-in: segmenter", loss, steps=settings.steps,
               learning_rate=settings.learning_rate)


# ---------------------------------------------------------------------------------------------
# Patch embedders


@dataclass
class PatchBatch:
    """Images [B, 3, R, R] with their brick and (unedited) car fractions [B, 1, R, R] per pixel;
    ``walls`` [B] bool: which images are whole brick walls."""

    images: torch.Tensor
    bricks: torch.Tensor
    cars: torch.Tensor
    walls: torch.Tensor


def patch_batch(examples: EditExamples, batch_size: int, generator: torch.Generator) -> PatchBatch:
    """A quarter brick walls (half of them with a rectangle of a scene, 4-16 px a side, pasted in),
    the rest editor-like edits (a quarter of them unedited scenes) with a rectangle of bricks pasted
    anywhere: bricks are to be told by what they look like, not by how much of the image they
    fill. Blurred by up to 1 px, colour-shifted and noised."""
    walls = batch_size // 4
    scenes = sample_scenes(examples, batch_size - walls, generator)
    bricks = brick_regions(scenes, generator) * coin_flips(len(scenes.masks), generator, 0.75).view(-1, 1, 1, 1)
    edits = scenes.inputs + bricks * (scenes.targets - scenes.inputs)
    size = examples.cars.shape[-1]
    patches = random_rectangles(len(edits), 4, 16, size, generator)
    edits = patches * random_wall_patterns(examples.walls, len(edits), generator) + (1 - patches) * edits
    cars = (scenes.masks - bricks) * (1 - patches)
    bricks = patches + (1 - patches) * bricks
    holes = random_rectangles(walls, 4, 16, size, generator) * coin_flips(walls, generator).view(-1, 1, 1, 1)
    wall_images = holes * scenes.inputs[:walls] + (1 - holes) * random_wall_patterns(examples.walls, walls, generator)
    images = torch.cat([edits, wall_images])
    sigmas = uniform(batch_size, 0.0, 1.0, generator) * coin_flips(batch_size, generator)
    images = add_noise(colour_shift(gaussian_blur(images, sigmas), 0.15, generator), 0.03, generator)
    return PatchBatch(images, torch.cat([bricks, 1 - holes]), torch.cat([cars, holes * scenes.masks[:walls]]),
                      torch.arange(batch_size) >= batch_size - walls)


def brick_contrast(tokens: torch.Tensor, bricks: torch.Tensor, groups: list[torch.Tensor],
                   reference: torch.Tensor) -> torch.Tensor:
    """Squared differences of cosine similarities to ``2b − 1``: every patch token [N, D] (brick
    fraction ``b`` [N]) against every reference token [M, D] (brick-wall patches); averaged within
    each group (``groups``: [N] bool each), then over the groups, so that few patches of a kind
    (a car's, beside walls and backgrounds) weigh as much as many.

    Brick patches are pulled onto the walls' tokens (cosine 1), the others pushed away (cosine −1),
    partial bricks in between: the contrast the semantic score reads (its patch distance is
    1 − cosine to the style's patches).
    """
    cosine = F.normalize(tokens, dim=-1) @ F.normalize(reference, dim=-1).T  # (N, M)
    errors = (cosine - (2 * bricks[:, None] - 1)).pow(2).mean(1)
    return torch.stack([errors[group].mean() for group in groups if group.any()]).mean()


def train_patch_embedder(embedder, model: nn.Module, label: str, examples: EditExamples,
                         settings: TrainingSettings, generator: torch.Generator) -> list[float]:
    """Train ``model`` (the module behind ``embedder``, whose ``tokens(images)`` gives the patch
    tokens ``(B, N, D)`` that production reads) in place with :func:`brick_contrast` on
    :func:`patch_batch` es: each patch's brick fraction is that of the pixels it covers, the
    reference a random sample of the batch's brick-wall patches, the groups wall patches, brick,
    car and background patches of the scenes."""

    def loss(step: int) -> torch.Tensor:
        batch = patch_batch(examples, settings.batch_size, generator)
        tokens, grid = embedder.tokens(batch.images)
        tokens = tokens.flatten(0, 1)
        bricks = F.adaptive_max_pool2d(batch.bricks, grid).flatten()  # a patch showing bricks at all is brick
        cars = F.adaptive_avg_pool2d(batch.cars, grid).flatten()
        walls = batch.walls[:, None].expand(-1, grid[0] * grid[1]).flatten()  # (B·N,) each
        groups = [walls, ~walls & (bricks >= 0.5), cars >= 0.5, (bricks < 0.5) & (cars < 0.5)]
        solid = (bricks > 0.99).nonzero()[:, 0]  # wall patches and bricks pasted into scenes alike
        reference = solid[torch.randint(len(solid), (REFERENCE_PATCHES,), generator=generator)]
        return brick_contrast(tokens, bricks, groups, tokens[reference])

    return fit(model, label, loss, steps=settings.steps, learning_rate=settings.learning_rate)
