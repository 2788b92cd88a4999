"""Semantic score (docs/method.md §4) on hand-made tensors with known answers."""

import math

import pytest
import torch

from editspecialists.rewards.semantic import (
    downsample_mask,
    patch_distance,
    reconstruction_outside,
    semantic_score,
)


def test_downsample_mask_is_nearest_on_the_grid():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, 2:] = True  # top-right quarter
    assert downsample_mask(mask, (2, 2)).tolist() == [[False, True, False, False]]
    wide = torch.zeros(1, 2, 6, dtype=torch.bool)
    wide[0, :, :2] = True  # left third → first column of a 1 × 3 grid
    assert downsample_mask(wide, (1, 3)).tolist() == [[True, False, False]]


def test_a_mask_empty_on_the_grid_falls_back_to_all_ones():
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = True  # one pixel that nearest sampling of a 2 × 2 grid never reads
    mask[1, 0, 0] = True  # read by the grid
    grid = downsample_mask(mask, (2, 2))
    assert grid.tolist() == [[True] * 4, [True, False, False, False]]


def reference_patch_distance(edit_tokens, style_tokens, edit_mask, style_mask):
    """docs/method.md §4 written out with Python loops: mean_i∈edit mean_j∈style (1 − cos)."""
    scores = []
    for b in range(edit_tokens.shape[0]):
        per_patch = []
        for i in range(edit_tokens.shape[1]):
            if not edit_mask[b, i]:
                continue
            distances = []
            for j in range(style_tokens.shape[1]):
                if style_mask[b, j]:
                    e, s = edit_tokens[b, i].tolist(), style_tokens[b, j].tolist()
                    cos = sum(x * y for x, y in zip(e, s)) / math.sqrt(sum(x * x for x in e) * sum(y * y for y in s))
                    distances.append(1 - cos)
            per_patch.append(sum(distances) / len(distances))
        scores.append(sum(per_patch) / len(per_patch))
    return torch.tensor(scores)


def test_patch_distance_matches_an_independent_computation():
    generator = torch.Generator().manual_seed(1)
    edit_tokens = torch.randn(3, 6, 5, generator=generator)
    style_tokens = torch.randn(3, 4, 5, generator=generator)
    edit_mask = torch.tensor([[1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    style_mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    expected = reference_patch_distance(edit_tokens, style_tokens, edit_mask, style_mask)
    got = patch_distance(edit_tokens, style_tokens, edit_mask, style_mask)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-6)


def test_patch_distance_known_values():
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    s = torch.tensor([[[2.0, 0.0], [0.0, -3.0]]])
    everything = torch.ones(1, 2, dtype=torch.bool)
    only_first = torch.tensor([[True, False]])
    # edit patch 0 vs style patch 0: parallel → 0
    assert patch_distance(e, s, only_first, only_first).item() == pytest.approx(0.0, abs=1e-7)
    # edit patch 1 (0, 1) vs style patch 1 (0, −3): opposite → 2
    only_second = torch.tensor([[False, True]])
    assert patch_distance(e, s, only_second, only_second).item() == pytest.approx(2.0)
    # all pairs: distances (0, 1, 1, 2) → mean 1
    assert patch_distance(e, s, everything, everything).item() == pytest.approx(1.0)


def test_empty_grid_masks_mean_the_whole_image_and_never_nan():
    generator = torch.Generator().manual_seed(2)
    edit_tokens, style_tokens = torch.randn(2, 4, 3, generator=generator), torch.randn(2, 5, 3, generator=generator)
    empty_edit, empty_style = torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)
    full_edit, full_style = torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    got = patch_distance(edit_tokens, style_tokens, empty_edit, empty_style)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, patch_distance(edit_tokens, style_tokens, full_edit, full_style))


def images(seed, batch=2, size=(6, 8)):
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_identical_edit_reconstructs_perfectly():
    inputs = images(0)
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[:, 2:4, 3:6] = True
    assert reconstruction_outside(inputs.clone(), inputs, mask).tolist() == [0.0, 0.0]


def test_changes_inside_the_mask_leave_reconstruction_at_zero():
    inputs = images(1)
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[:, 1:5, 2:7] = True
    edits = torch.where(mask[:, None], images(2), inputs)
    assert not torch.equal(edits, inputs)
    assert reconstruction_outside(edits, inputs, mask).tolist() == [0.0, 0.0]


def test_reconstruction_is_the_mean_rgb_squared_error_outside():
    inputs = torch.full((1, 3, 4, 4), 0.5)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, :, :2] = True  # left half is the object; 8 pixels outside
    edits = inputs.clone()
    edits[:, 0, :2, 2:] += 0.3  # red +0.3 on 4 outside pixels: per-pixel MSE 0.09/3 = 0.03
    edits[:, :, :, :2] = 1.0  # inside: ignored
    assert reconstruction_outside(edits, inputs, mask).item() == pytest.approx(0.03 * 4 / 8)


def test_reconstruction_with_an_empty_outside_or_an_empty_mask_uses_the_whole_image():
    inputs, edits = images(3), images(4)
    whole_image_mse = (edits - inputs).pow(2).mean(dim=(1, 2, 3))
    all_object = torch.ones(2, 6, 8, dtype=torch.bool)
    no_object = torch.zeros(2, 6, 8, dtype=torch.bool)
    for mask in (all_object, no_object):
        got = reconstruction_outside(edits, inputs, mask)
        assert torch.isfinite(got).all() and torch.allclose(got, whole_image_mse)


def test_semantic_score_adds_weighted_reconstruction():
    generator = torch.Generator().manual_seed(5)
    e, s = torch.randn(2, 4, 3, generator=generator), torch.randn(2, 4, 3, generator=generator)
    edit_mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    style_mask = torch.ones(2, 4, dtype=torch.bool)
    reconstruction = torch.tensor([0.2, 0.4])
    distance = patch_distance(e, s, edit_mask, style_mask)
    assert torch.equal(semantic_score(e, s, edit_mask, style_mask), distance)
    got = semantic_score(e, s, edit_mask, style_mask, reconstruction, rec_lambda=0.5)
    assert torch.allclose(got, distance + torch.tensor([0.1, 0.2]))
    assert torch.allclose(semantic_score(e, s, edit_mask, style_mask, reconstruction, rec_lambda=0.0), distance)
