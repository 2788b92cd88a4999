"""Metric definitions of docs/method.md §8 / §11 on hand-built patch tokens and embeddings."""

import pytest
import torch
import torch.nn.functional as F

from editspecialists.evaluation import metrics


def _cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def _style_similarity_by_hand(edit, style, edit_region, style_region):
    """The formula written out: mean over edit-region cells i of mean over style cells j of cos."""
    rows = []
    for i in edit_region.nonzero().flatten().tolist():
        cols = [_cos(edit[i], style[j]) for j in style_region.nonzero().flatten().tolist()]
        rows.append(sum(cols) / len(cols))
    return sum(rows) / len(rows)


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(0)
    edit, style = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    edit_region = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    style_region = torch.tensor([[0, 0, 0, 0, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=torch.bool)
    return edit, style, edit_region, style_region


def test_gen_sty_matches_the_formula(tokens):
    edit, style, edit_region, style_region = tokens
    got = metrics.patch_similarity_to_style(edit, style, edit_region, style_region)
    for b in range(2):
        want = _style_similarity_by_hand(edit[b], style[b], edit_region[b], style_region[b])
        assert got[b].item() == pytest.approx(want, abs=1e-6)


def test_swapping_edit_and_style_swaps_the_roles_in_the_formula(tokens):
    """With edit and style swapped, the input region now selects *style* cells (the original's bug
    compared the wrong image): the value is the formula with the roles exchanged, not the same."""
    edit, style, edit_region, style_region = tokens
    straight = metrics.patch_similarity_to_style(edit, style, edit_region, style_region)
    swapped = metrics.patch_similarity_to_style(style, edit, edit_region, style_region)
    for b in range(2):
        want = _style_similarity_by_hand(style[b], edit[b], edit_region[b], style_region[b])
        assert swapped[b].item() == pytest.approx(want, abs=1e-6)
    assert not torch.allclose(straight, swapped, atol=1e-3)


def test_gen_sty_is_maximal_when_the_edit_region_is_the_style():
    style = torch.randn(1, 4, 8).expand(1, 4, 8).clone()
    style[:, :] = style[:, :1]  # every style cell the same vector
    edit = torch.randn(1, 4, 8)
    edit[0, :2] = 3 * style[0, 0]  # the edited region copies it (any scale)
    region = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    full = torch.ones(1, 4, dtype=torch.bool)
    assert metrics.patch_similarity_to_style(edit, style, region, full).item() == pytest.approx(1.0, abs=1e-6)


def _background_similarity_by_hand(edit, source, background):
    """docs/method.md §11 written out: for each edit background cell p, mean cos to every input background
    cell q; then the mean over p."""
    cells = background.nonzero().flatten().tolist()
    per_cell = [sum(_cos(edit[p], source[q]) for q in cells) / len(cells) for p in cells]
    return sum(per_cell) / len(per_cell)


def test_gen_input_is_the_all_pairs_mean_over_the_background(tokens):
    edit, source, _, _ = tokens
    background = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    got = metrics.patch_similarity_to_background(edit, source, background)
    for b in range(2):
        assert got[b].item() == pytest.approx(_background_similarity_by_hand(edit[b], source[b], background[b]), abs=1e-6)


def test_gen_input_and_its_aligned_variant_on_hand_written_tokens():
    """Cells 0, 1 are background, cell 2 the object (its tokens must not count)."""
    source = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    edit = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    background = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    r = 2**-0.5
    # paper: cell 0 → (cos 1 + cos 0)/2, cell 1 → (r + r)/2; aligned: cell 0 → 1, cell 1 → r
    assert metrics.patch_similarity_to_background(edit, source, background).item() == pytest.approx((0.5 + r) / 2)
    assert metrics.patch_similarity_locationwise(edit, source, background).item() == pytest.approx((1 + r) / 2)
    # an unchanged background: 1 location-wise, only the mean self-similarity (here 0.5) over all pairs
    assert metrics.patch_similarity_to_background(source, source, background).item() == pytest.approx(0.5)
    assert metrics.patch_similarity_locationwise(source, source, background).item() == pytest.approx(1.0)


def test_gen_input_aligned_is_one_for_an_unchanged_image_and_location_wise():
    image = torch.randn(2, 9, 4)
    background = torch.ones(2, 9, dtype=torch.bool)
    assert torch.allclose(metrics.patch_similarity_locationwise(image, image, background), torch.ones(2))
    shuffled = image[:, torch.randperm(9)]
    assert (metrics.patch_similarity_locationwise(shuffled, image, background) < 0.99).all()
    # all pairs: blind to where a cell is
    assert torch.allclose(metrics.patch_similarity_to_background(shuffled, image, background),
                          metrics.patch_similarity_to_background(image, image, background), atol=1e-6)


def test_gen_input_aligned_reads_only_the_background():
    source = torch.randn(1, 4, 3)
    edit = source.clone()
    edit[0, 0] = -source[0, 0]  # the object (cell 0) changed completely
    background = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    assert metrics.patch_similarity_locationwise(edit, source, background).item() == pytest.approx(1.0)
    everywhere = torch.ones(1, 4, dtype=torch.bool)
    assert metrics.patch_similarity_locationwise(edit, source, everywhere).item() == pytest.approx(0.5)


def test_clip_dir_uses_raw_features_and_the_normalized_variant_unit_ones():
    edit, source = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    prompt, name = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # raw: cos((4, -1), (1, -2)) = 6 / sqrt(17 * 5); normalised: cos((1, -1), (1, -1)) = 1
    raw = metrics.clip_direction_similarity(edit, source, prompt, name)
    assert raw.item() == pytest.approx(6 / 85**0.5)
    assert metrics.clip_direction_similarity_normalized(edit, source, prompt, name).item() == pytest.approx(1.0)


def test_clip_direction_and_text_similarity():
    a, b = F.normalize(torch.randn(2, 6), dim=-1), F.normalize(torch.randn(2, 6), dim=-1)
    assert torch.allclose(metrics.clip_text_similarity(a, b), F.cosine_similarity(a, b))
    assert torch.allclose(metrics.clip_text_similarity(3 * a, b), F.cosine_similarity(a, b))  # scale-free
    assert torch.allclose(metrics.clip_direction_similarity(a + 2 * (b - a), a, b, a), torch.ones(2), atol=1e-6)
    for direction in (metrics.clip_direction_similarity, metrics.clip_direction_similarity_normalized):
        assert torch.allclose(direction(b, a, b, a), torch.ones(2), atol=1e-6)  # edit moved input to prompt
        assert torch.allclose(direction(a, a, b, a), torch.zeros(2))  # no change: 0


def test_hps_is_the_cosine_and_pick_scales_it():
    a, b = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    cos = (a * b).sum(-1)
    assert torch.allclose(metrics.hps_score(a, b), cos)
    assert torch.allclose(metrics.pick_score(a, b, 42.0), 42 * cos)
