"""The demo's feedback stand-ins mean what their names say, on demo scenes they were not trained on.

The stand-ins train on scenes drawn from seed 0 (editspecialists.demo.feedback_training); these
tests draw theirs from another seed and read the models through the production loaders. Each
threshold sits between what an untrained build of the same model scores (measured here too, so
that the threshold is known to separate) and what the trained one scores; the figures measured
when the thresholds were set are in the comments (trained / untrained).
"""

import pytest
import torch
import torch.nn.functional as F

from editspecialists.data.images import resize_center_crop
from editspecialists.demo import feedback_standins
from editspecialists.demo.feedback_training import gaussian_blur
from editspecialists.demo.scenes import DEMO_RESOLUTION, car_box, car_mask, demo_training_images, image_tensor, resize, scene_depth

HELD_OUT_SEED = 1000  # the stand-ins trained on seed 0's drawings
NUM_SCENES, NUM_WALLS = 24, 8


class HeldOut:
    """Scenes and walls at the demo's 32 px, read as the dataset reads files (bicubic resize), with
    their ground truth: car masks (bool) and boxes (xyxy, pixels), scene depths."""

    def __init__(self, seed: int = HELD_OUT_SEED):
        cars, walls = demo_training_images(num_cars=NUM_SCENES, num_walls=NUM_WALLS, seed=seed)
        full = torch.stack([image_tensor(car) for car in cars])
        masks = torch.stack([car_mask(car) for car in full])
        scale = DEMO_RESOLUTION / full.shape[-1]
        self.inputs = torch.stack([image_tensor(resize_center_crop(car, DEMO_RESOLUTION)) for car in cars])
        self.walls = torch.stack([image_tensor(resize_center_crop(wall, DEMO_RESOLUTION)) for wall in walls])
        self.soft_masks = resize(masks, DEMO_RESOLUTION)  # (N, 1, R, R)
        self.masks = self.soft_masks[:, 0] > 0.5
        self.boxes = torch.stack([car_box(mask) for mask in masks]) * scale
        self.depths = resize(torch.stack([scene_depth(car) for car in full]), DEMO_RESOLUTION)[:, 0]
        self.styles = self.walls[torch.arange(NUM_SCENES) % NUM_WALLS]


@pytest.fixture(scope="module")
def held_out():
    return HeldOut()


@pytest.fixture(scope="module")
def trained(tiny_root):
    return feedback_standins.build_all(tiny_root)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of paired boxes [N, 4] xyxy."""
    low, high = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    overlap = (high - low).clamp_min(0).prod(1)
    area = lambda boxes: (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return overlap / (area(a) + area(b) - overlap)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of paired bool masks [N, H, W]."""
    return (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp_min(1)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """The stand-ins built without training (random weights, as before they were trained)."""
    root = tmp_path_factory.mktemp("untrained")
    folders = {}
    for role in ("detector", "segmenter", "depth", "dreamsim"):
        (root / role).mkdir()
        feedback_standins.BUILDERS[role](root / role, steps=0)
        folders[role] = str(root / role)
    return folders


def detections(folders, images, name):
    """(best box [N, 4] or NaN where none, its score [N] or 0, boxes kept per image) of the
    production mask predictor's detector at its default thresholds (0.4 box, 0.3 text, as
    config/base.py)."""
    from editspecialists.rewards.masks import MaskPredictor

    predictor = MaskPredictor.from_pretrained(folders["detector"], folders["segmenter"])
    with torch.inference_mode():
        boxes, scores = predictor.detect(images, [name] * len(images))
    best = torch.stack([b[s.argmax()] if len(s) else torch.full((4,), float("nan")) for b, s in zip(boxes, scores)])
    top = torch.stack([s.max() if len(s) else torch.zeros(()) for s in scores])
    return best, top, [len(b) for b in boxes]


def detector_figures(folders, held_out):
    cars, car_scores, _ = detections(folders, held_out.inputs, "car")
    walls, wall_scores, _ = detections(folders, held_out.walls, "lego")
    whole = torch.tensor([[0.0, 0.0, DEMO_RESOLUTION, DEMO_RESOLUTION]]).expand(len(walls), 4)
    return {
        "car_found": (car_scores > 0).float().mean().item(),
        "car_iou": box_iou(cars, held_out.boxes).nan_to_num(0).mean().item(),
        "wall_found": (wall_scores > 0).float().mean().item(),
        "wall_iou": box_iou(walls, whole).nan_to_num(0).mean().item(),
        "car_called_lego": (detections(folders, held_out.inputs, "lego")[1] > 0).float().mean().item(),
        "wall_called_car": (detections(folders, held_out.walls, "car")[1] > 0).float().mean().item(),
    }


def test_the_detector_finds_the_car_and_the_brick_wall_by_name(trained, untrained, held_out):
    """Untrained, every query fires on anything with boxes of IoU 0.01; trained (measured
    2026-12-06): the car found in 100 % of the scenes, best box IoU 0.49 with the true box (the
    weakest of the four: a car is symmetric, and where its centre lies is learnt last), the wall's
    box IoU 0.55 with the whole image; the wrong name fires on 4 % of cars, 25 % of walls."""
    figures, before = detector_figures(trained, held_out), detector_figures(untrained, held_out)
    assert figures["car_found"] >= 0.9 and figures["wall_found"] >= 0.9, figures
    assert figures["car_iou"] >= 0.35 > before["car_iou"], (figures, before)
    assert figures["wall_iou"] >= 0.35 > before["wall_iou"], (figures, before)
    assert figures["car_called_lego"] <= 0.5 < before["car_called_lego"], (figures, before)
    assert figures["wall_called_car"] <= 0.5 < before["wall_called_car"], (figures, before)


def segmenter_figures(folders, held_out):
    """Mask IoU with the car from the true box (SAM2 alone) and from the detector's boxes (the
    MaskPredictor path the trainer runs), and how much of a wall the whole-image box covers."""
    from editspecialists.rewards.masks import MaskPredictor

    predictor = MaskPredictor.from_pretrained(folders["detector"], folders["segmenter"])
    with torch.inference_mode():
        from_box = predictor.segment(held_out.inputs, [box[None] for box in held_out.boxes])
        predicted = predictor(held_out.inputs, "car").masks
        whole = torch.tensor([[0.0, 0.0, DEMO_RESOLUTION, DEMO_RESOLUTION]])
        wall = predictor.segment(held_out.walls, [whole] * len(held_out.walls))
    return {
        "from_true_box": mask_iou(from_box, held_out.masks).mean().item(),
        "from_detector": mask_iou(predicted, held_out.masks).mean().item(),
        "wall_covered": wall.float().mean().item(),
    }


def test_the_segmenter_masks_the_car_from_its_box_and_the_wall_from_the_whole_image(trained, untrained, held_out):
    """Mask IoU with the car, trained / untrained (2026-12-06): 0.64 / 0.08 from the true box,
    0.64 / 0.09 from the detector's boxes; a wall covered 1.00 / 0.61 from the whole-image box.
    (SAM2's 16 px low-resolution masks bound the IoU: the true mask through them scores 0.90.)"""
    figures, before = segmenter_figures(trained, held_out), segmenter_figures(untrained, held_out)
    assert figures["from_true_box"] >= 0.5 > before["from_true_box"], (figures, before)
    assert figures["from_detector"] >= 0.5 > before["from_detector"], (figures, before)
    assert figures["wall_covered"] >= 0.9 > before["wall_covered"], (figures, before)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of maps [N, H, W]."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def depth_figures(folder, held_out):
    from editspecialists.rewards.depth import DepthEstimator

    depth = DepthEstimator.from_pretrained(folder)
    edits = good_edits(held_out)
    return {
        "input": pearson(depth(held_out.inputs), held_out.depths).mean().item(),
        "edit": pearson(depth(edits), held_out.depths).mean().item(),
    }


def test_the_depth_model_predicts_the_scene_depth_of_scenes_and_of_their_edits(trained, untrained, held_out):
    """Mean per-image Pearson correlation with the scene depth, trained / untrained (2026-12-06):
    0.96 / 0.18 on the scenes, 0.96 / 0.12 on their good edits (bricks where the car was)."""
    figures, before = depth_figures(trained["depth"], held_out), depth_figures(untrained["depth"], held_out)
    assert figures["input"] >= 0.85 > before["input"], (figures, before)
    assert figures["edit"] >= 0.85 > before["edit"], (figures, before)


def good_edits(held_out):
    """The car's pixels replaced by the style image's (soft mask edges blend), background kept."""
    return held_out.soft_masks * held_out.styles + (1 - held_out.soft_masks) * held_out.inputs


def patch_figures(folder, held_out):
    """For the brick patches of the good edits (the car replaced by the style's bricks): the
    precision of their 10 nearest patches among the patches of scenes and walls in other palettes
    (are they bricks: edit bricks or wall patches, not car or background?), and the mean cosine
    similarity to wall patches of edit bricks, car patches and background patches."""
    from editspecialists.rewards.features import load_patch_embedder

    embedder = load_patch_embedder("dreamsim", folder)
    edit_tokens, grid = embedder(good_edits(held_out))
    input_tokens, _ = embedder(held_out.inputs)
    wall_tokens, _ = embedder(held_out.walls)
    covered = F.adaptive_avg_pool2d(held_out.soft_masks, grid).flatten(1)  # (N, patches): car fraction
    normalised = lambda tokens: F.normalize(tokens, dim=-1)
    palettes = torch.arange(len(held_out.inputs)) % NUM_WALLS  # the style (wall) of each scene's edit
    precisions = []
    for scene in range(len(held_out.inputs)):
        others = palettes != palettes[scene]
        bricks = torch.cat([edit_tokens[others][covered[others] > 0.9], wall_tokens[torch.arange(NUM_WALLS) != palettes[scene]].flatten(0, 1)])
        rest = torch.cat([input_tokens[others][covered[others] > 0.9], input_tokens[others][covered[others] == 0]])
        pool = normalised(torch.cat([bricks, rest]))
        nearest = (normalised(edit_tokens[scene][covered[scene] > 0.9]) @ pool.T).topk(10, dim=1).indices
        precisions.append((nearest < len(bricks)).float().mean())
    walls = normalised(wall_tokens.flatten(0, 1))
    to_walls = lambda tokens: (normalised(tokens) @ walls.T).mean().item()
    return {"brick_precision": torch.stack(precisions).mean().item(),
            "bricks_to_walls": to_walls(edit_tokens[covered > 0.9]), "car_to_walls": to_walls(input_tokens[covered > 0.9]),
            "background_to_walls": to_walls(input_tokens[covered == 0]), "walls_to_walls": to_walls(wall_tokens.flatten(0, 1))}


def test_dreamsim_puts_brick_patches_near_brick_patches_whatever_the_palette(trained, untrained, held_out):
    """Mean cosine similarity to the walls' patches (other palettes included), trained / untrained
    (2026-12-06): walls 0.86 / 0.66, edit bricks 0.35 / 0.66, car -0.20 / 0.59, background
    -0.80 / 0.65; untrained, everything is alike. The trained contrast is what the semantic score
    reads; it is weaker for bricks inside a scene than in a wall (the tiny ViT also reads how much
    of the image is bricks), and the nearest-neighbour precision of edit bricks among other
    palettes' bricks, cars and backgrounds is 0.69 / 0.65: bricks in a scene gather by colour
    too."""
    figures, before = patch_figures(trained["dreamsim"], held_out), patch_figures(untrained["dreamsim"], held_out)
    contrast = lambda f, a, b: f[a] - f[b]
    for near, far, least in (("bricks_to_walls", "car_to_walls", 0.3), ("bricks_to_walls", "background_to_walls", 0.5),
                             ("walls_to_walls", "car_to_walls", 0.5), ("walls_to_walls", "background_to_walls", 0.5)):
        assert contrast(figures, near, far) >= least > contrast(before, near, far), (near, far, figures, before)


def car_removed(held_out):
    """Each car pixel painted with its row's background (column 0 never shows the car)."""
    background = held_out.inputs[..., :1].expand_as(held_out.inputs)
    return held_out.soft_masks * background + (1 - held_out.soft_masks) * held_out.inputs


def car_moved(held_out, shift: int = 8):
    """The car moved ``shift`` pixels sideways, towards the side with more room."""
    removed = car_removed(held_out)
    moved = []
    for image, scene, mask, box in zip(removed, held_out.inputs, held_out.soft_masks, held_out.boxes):
        step = shift if box[0] < DEMO_RESOLUTION - box[2] else -shift
        car, where = scene.roll(step, dims=-1), mask.roll(step, dims=-1)
        moved.append(where * car + (1 - where) * image)
    return torch.stack(moved)


EDITS = ("good edit", "unchanged", "blurred", "whole-frame wall", "colour-shifted", "car moved", "car removed",
         "heavily blurred")


def hand_made_edits(held_out) -> torch.Tensor:
    """(N, len(EDITS), 3, R, R): per held-out scene, the edits named in :data:`EDITS`."""
    inputs = held_out.inputs
    shift = torch.tensor([0.25, 0.0, -0.25]).view(1, 3, 1, 1)
    edits = [good_edits(held_out), inputs, gaussian_blur(inputs, torch.full((len(inputs),), 1.0)), held_out.styles,
             (inputs + shift).clamp(0, 1), car_moved(held_out), car_removed(held_out),
             gaussian_blur(inputs, torch.full((len(inputs),), 2.5))]
    return torch.stack(edits, dim=1)


def scores_of(folders, held_out):
    """The semantic and structural scores of the hand-made edits, through rewards.build_scorer with
    the demo's config (config/demo.py) and its models at ``folders``: {name: (N, len(EDITS))}."""
    from editspecialists.rewards import build_scorer
    from tests.helpers import load_config

    config = load_config("demo")
    config.models.update(detector=folders["detector"], segmenter=folders["segmenter"], depth=folders["depth"],
                         dreamsim=folders["dreamsim"], dreamsim_cache=folders["dreamsim"])
    config.reward.weights = {"semantic": 1.0, "structural": 1.0}
    return build_scorer(config, "cpu")(hand_made_edits(held_out), held_out.inputs, held_out.styles)


@pytest.fixture(scope="module")
def scores(trained, held_out):
    return scores_of(trained, held_out)


def margins(scores, name: str, worse: str) -> tuple[float, float]:
    """(mean of score(worse) - score(good edit), fraction of scenes where the good edit scores lower)."""
    good, bad = scores[name][:, EDITS.index("good edit")], scores[name][:, EDITS.index(worse)]
    return (bad - good).mean().item(), (good < bad).float().mean().item()


# (margin, wins) measured 2026-12-06, trained / untrained: unchanged (0.18, 0.88) / (0.01, 0.75),
# blurred (0.21, 0.88) / (0.00, 0.50), colour-shifted (0.25, 0.88) / (0.21, 1.00) (CI's machine
# measured colour-shifted 0.25 too; an earlier build of the same code measured 0.28-0.37: training
# the stand-ins is not bitwise reproducible across machines). A colour shift changes the
# background too, which the reconstruction term charges whatever the models, so its threshold
# only guards against a semantic score that prefers the shift.
@pytest.mark.parametrize("worse, least", [("unchanged", 0.15), ("blurred", 0.15), ("colour-shifted", 0.15)])
def test_the_semantic_score_prefers_the_car_turned_into_bricks(scores, worse, least):
    margin, wins = margins(scores, "semantic", worse)
    assert margin >= least and wins >= 0.8, (worse, margin, wins)


@pytest.mark.xfail(strict=True, reason="known weakness: the tiny DreamSim puts a whole brick wall nearer the "
                                       "style than bricks in the car's place (patch distance 0.11 against "
                                       "0.72), far beyond what rec_lambda 0.5 x MSE outside the car (0.06) "
                                       "charges for losing the scene; measured margin -0.53")
def test_the_semantic_score_prefers_the_car_turned_into_bricks_to_a_whole_frame_wall(scores):
    margin, wins = margins(scores, "semantic", "whole-frame wall")
    assert margin > 0 and wins >= 0.8, (margin, wins)


# (margin, wins) measured 2026-12-06, trained / untrained: car moved (0.033, 0.92) / (0.011, 0.63),
# car removed (0.034, 0.96) / (0.020, 0.58). The good edit itself scores 0.024 (bricks still move
# the tiny model's depth a little), moving or removing the car 0.057; untrained, any change of
# the pixels moves the depth about as much.
@pytest.mark.parametrize("worse", ["car moved", "car removed"])
def test_the_structural_score_prefers_the_scene_kept(scores, worse):
    margin, wins = margins(scores, "structural", worse)
    assert margin >= 0.01 and wins >= 0.7, (worse, margin, wins)


# Measured 2026-12-06 with the depth stand-in of builder version 3: margin 0.254, wins 1.00 (the
# good edit itself 0.024). Version 2, trained without walls in front of the scene, read bricks as
# whatever the scene was there: margin 0.060. A demo run of 30 epochs then painted the whole
# frame with bricks (held-out semantic 1.07 -> 0.19, structural +0.05): reward hacking that a
# structural score must charge.
def test_the_structural_score_charges_bricks_spread_over_the_whole_frame(scores):
    margin, wins = margins(scores, "structural", "whole-frame wall")
    assert margin >= 0.15 and wins >= 0.9, (margin, wins)


def test_the_methods_ranking_puts_the_car_turned_into_bricks_ahead_of_a_whole_frame_wall(scores):
    """The trainer's ranking (training.ranking.combine_scores, standardised per scene over the
    hand-made edits, config/demo.py's weights): the semantic score prefers the wall (see the
    xfail above), the structural score charges it more. Measured 2026-12-06: the good edit ahead
    in 23 of 24 scenes."""
    from editspecialists.rewards import SCORES
    from editspecialists.training.ranking import combine_scores
    from tests.helpers import load_config

    weights = dict(load_config("demo").reward.weights)
    combined = combine_scores(scores, weights, {name: SCORES[name].lower_is_better for name in weights},
                              torch.arange(len(scores["semantic"])))
    ahead = combined[:, EDITS.index("good edit")] < combined[:, EDITS.index("whole-frame wall")]
    assert ahead.float().mean() >= 0.8, ahead


# The bar of the two tests above (a preference as clear as for a car moved or removed). With
# "margin > 0 and wins >= 0.65" this known weakness sat on the edge, so that the build of the
# stand-ins decided the verdict: margin -0.000 on one machine, +0.001 with wins 0.67 on another
# (2026-12-07), an unexpected pass of a strict xfail.
@pytest.mark.xfail(strict=True, reason="known weakness: the tiny depth model (4 x 4 patches) predicts smooth depth "
                                       "already, so heavy blur (2.5 px) changes it by 0.024, as much as bricks do "
                                       "(0.024); measured margin -0.000 and +0.001")
def test_the_structural_score_prefers_the_scene_kept_to_a_heavily_blurred_one(scores):
    margin, wins = margins(scores, "structural", "heavily blurred")
    assert margin >= 0.01 and wins >= 0.7, (margin, wins)
