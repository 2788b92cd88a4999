"""The paper-compatible metrics (docs/method.md §11) of each family, through the tiny real models, against
straightforward loops written here, and their variants of ours where they should differ."""

import math

import ml_collections
import pytest
import torch
from PIL import Image

from editspecialists.demo.images import write_demo_images
from editspecialists.data.images import image_to_tensor
from editspecialists.evaluation.families import FAMILIES, EvalBatch, FamilySettings
from editspecialists.rewards.semantic import downsample_mask


@pytest.fixture(scope="module")
def settings(tiny_root):
    from editspecialists.demo import evaluation_standins, feedback_standins

    feedback_standins.build_all(tiny_root)
    evaluation_standins.build_all(tiny_root)
    models = ml_collections.ConfigDict(evaluation_standins.tiny_models_config(tiny_root))
    return FamilySettings(models, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Two inputs, edits that changed their lower half most (and the rest too), two styles; hand-made masks."""
    inputs, styles = write_demo_images(tmp_path_factory.mktemp("images"), num_inputs=2, num_styles=2)
    source = torch.stack([image_to_tensor(Image.open(p)) for p in sorted(inputs.iterdir())])
    style = torch.stack([image_to_tensor(Image.open(p)) for p in sorted(styles.iterdir())])
    h, w = source.shape[-2:]
    edit = source * 0.7 + 0.15  # the background changed too
    edit[:, :, h // 2 :] = edit[:, :, h // 2 :].flip(-1) * 0.6 + 0.2
    input_masks = torch.zeros(2, h, w, dtype=torch.bool)
    input_masks[0, h // 2 :] = True
    input_masks[1, h // 4 :, : w // 2] = True
    style_masks = torch.zeros(2, h, w, dtype=torch.bool)
    style_masks[0, :, w // 3 :] = True
    style_masks[1, : h // 2] = True
    return EvalBatch(edit, source, style, ["a lego car", "a lego car"], ["car", "car"], input_masks, style_masks)


def cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def mean_pairwise_cosine_loop(tokens_a, tokens_b, cells_a, cells_b):
    """For each cell p of ``cells_a``: mean cos to the ``cells_b`` cells of b; then the mean over p."""
    per_cell = [sum(cos(tokens_a[p], tokens_b[q]) for q in cells_b) / len(cells_b) for p in cells_a]
    return sum(per_cell) / len(per_cell)


def cells(grid_mask_row):
    return [i for i, inside in enumerate(grid_mask_row.tolist()) if inside]


def test_semantic_score_is_the_training_score_with_half_the_reconstruction(settings, batch):
    values = FAMILIES["semantic"].build(settings)(batch)
    embedder = settings.patch_embedder("dreamsim", settings.models.dreamsim)
    edit_tokens, grid = embedder(batch.edits)
    style_tokens, style_grid = embedder(batch.styles)
    edit_region, style_region = downsample_mask(batch.input_masks, grid), downsample_mask(batch.style_masks, style_grid)
    for b in range(2):
        e, s = edit_tokens[b].tolist(), style_tokens[b].tolist()
        distance = 1 - mean_pairwise_cosine_loop(e, s, cells(edit_region[b]), cells(style_region[b]))
        outside = (~batch.input_masks[b]).nonzero().tolist()
        squared = [((batch.edits[b, :, y, x] - batch.inputs[b, :, y, x]) ** 2).mean().item() for y, x in outside]
        l2_out = sum(squared) / len(squared)
        assert l2_out > 1e-3  # the example has a reconstruction term to count
        assert values["semantic_score"][b].item() == pytest.approx(distance + 0.5 * l2_out, abs=1e-5)
        assert values["semantic_score_norec"][b].item() == pytest.approx(distance, abs=1e-5)


def test_gen_input_is_all_pairs_of_background_cells_and_the_aligned_variant_differs(settings, batch):
    values = FAMILIES["dino_patches"].build(settings)(batch)
    embedder = settings.patch_embedder("dinov2", settings.models.dino)
    edit_tokens, grid = embedder(batch.edits)
    input_tokens, _ = embedder(batch.inputs)
    style_tokens, style_grid = embedder(batch.styles)
    background = downsample_mask(~batch.input_masks, grid)
    edit_region, style_region = downsample_mask(batch.input_masks, grid), downsample_mask(batch.style_masks, style_grid)
    for b in range(2):
        e, x, s = edit_tokens[b].tolist(), input_tokens[b].tolist(), style_tokens[b].tolist()
        out = cells(background[b])
        gen_input = mean_pairwise_cosine_loop(e, x, out, out)
        aligned = sum(cos(e[p], x[p]) for p in out) / len(out)
        gen_sty = mean_pairwise_cosine_loop(e, s, cells(edit_region[b]), cells(style_region[b]))
        assert values["dinoSim_gen_input"][b].item() == pytest.approx(gen_input, abs=1e-5)
        assert values["dinoSim_gen_input_aligned"][b].item() == pytest.approx(aligned, abs=1e-5)
        assert values["dinoSim_gen_sty"][b].item() == pytest.approx(gen_sty, abs=1e-5)
        assert abs(gen_input - aligned) > 1e-3


def test_clip_dir_is_the_cosine_of_raw_feature_differences(settings, batch):
    family = FAMILIES["clip"].build(settings)
    values = family(batch)
    edit, source = family.clip.image_features(batch.edits), family.clip.image_features(batch.inputs)
    prompt, name = family.clip.text_features(batch.prompts), family.clip.text_features(batch.input_names)
    assert not torch.allclose(edit.norm(dim=-1), torch.ones(2), atol=1e-2)  # raw: not unit vectors
    for b in range(2):
        image_delta = [p - q for p, q in zip(edit[b].tolist(), source[b].tolist())]
        text_delta = [p - q for p, q in zip(prompt[b].tolist(), name[b].tolist())]
        assert values["clip_dir"][b].item() == pytest.approx(cos(image_delta, text_delta), abs=1e-5)
        assert values["clip_txt"][b].item() == pytest.approx(cos(edit[b].tolist(), prompt[b].tolist()), abs=1e-5)
        unit = [[v / math.sqrt(sum(u * u for u in f)) for v in f] for f in (edit[b].tolist(), source[b].tolist(),
                                                                              prompt[b].tolist(), name[b].tolist())]
        normalized = cos([p - q for p, q in zip(unit[0], unit[1])], [p - q for p, q in zip(unit[2], unit[3])])
        assert values["clip_dir_normalized"][b].item() == pytest.approx(normalized, abs=1e-5)
        assert abs(values["clip_dir"][b].item() - normalized) > 1e-4


class HandMadeTokens:
    """Patch tokens on a 2 x 2 grid chosen per image (told apart by its constant pixel value):
    unit 2-vectors at known angles, so every cosine is cos(angle difference)."""

    def __init__(self, angles_by_value):
        self.angles_by_value = angles_by_value

    def __call__(self, images):
        angles = [self.angles_by_value[round(image.mean().item(), 2)] for image in images]
        radians = torch.tensor(angles, dtype=torch.float64).deg2rad()
        return torch.stack([radians.cos(), radians.sin()], dim=-1).float(), (2, 2)


def cosd(degrees):
    return math.cos(math.radians(degrees))


def test_research_code_slicing_reproduces_the_originals_branches_on_hand_made_features():
    """Cells 0, 1 (top row) are the input's object and the style's object, cells 2, 3 the
    background. Edit angles (90, 60, 0, 0), input (30, 0, 0, 60), style (90, 90, 180, 180)."""
    from editspecialists.evaluation.families import PatchSimilarityFamily

    values = {"edit": 0.1, "input": 0.2, "style": 0.3}
    angles = {0.1: (90, 60, 0, 0), 0.2: (30, 0, 0, 60), 0.3: (90, 90, 180, 180)}
    images = {role: torch.full((1, 3, 4, 4), value) for role, value in values.items()}
    top_row = torch.zeros(1, 4, 4, dtype=torch.bool)
    top_row[:, :2] = True
    batch = EvalBatch(images["edit"], images["input"], images["style"], ["a lego car"], ["car"], top_row, top_row)
    intended = {"gen_sty": (2 * cosd(0) + 2 * cosd(30)) / 4,  # edit object vs style object
                "gen_input": (cosd(0) + cosd(60)) / 2}  # edit background vs input background
    research = {  # docs/method.md §12, what the original printed under these names
        "clipSim": {"gen_sty": (cosd(60) + cosd(30) + cosd(90) + cosd(60)) / 4,  # input object vs edit object
                    "gen_input": (cosd(180) + cosd(120)) / 2},  # input background vs style background
        "dinoSim": {"gen_sty": (cosd(60) + cosd(90)) / 2,  # input object vs style object
                    "gen_input": intended["gen_input"]},  # symmetric under the swap
        "dreamsimSim": intended,
    }
    for slicing in ("intended", "research_code"):
        settings = FamilySettings(None, torch.device("cpu"), torch.float32, patch_slicing=slicing)
        for prefix in research:
            settings._patch_embedders[(prefix, "hand-made")] = HandMadeTokens(angles)
            got = PatchSimilarityFamily(settings, prefix, prefix, "hand-made")(batch)
            expected = intended if slicing == "intended" else research[prefix]
            for metric in ("gen_sty", "gen_input"):
                assert got[f"{prefix}_{metric}"].item() == pytest.approx(expected[metric], abs=1e-6), (slicing, prefix)
            # ours, location-wise edit vs input, whatever the slicing
            assert got[f"{prefix}_gen_input_aligned"].item() == pytest.approx((cosd(0) + cosd(60)) / 2, abs=1e-6)
    assert (research["clipSim"]["gen_input"], research["dinoSim"]["gen_sty"]) == pytest.approx((-0.75, 0.25))
