"""Metric definitions of docs/method.md §8 and §11 as pure tensor functions (one per metric family; higher-level
loading lives in :mod:`editspecialists.evaluation.families`).

Shapes: ``B`` images, ``N``/``M`` patch tokens of dimension ``D``; masks are bool ``(B, N)`` on the
patch grid (already falling back to all-ones where empty). Every function returns ``(B,)`` float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from editspecialists.rewards.semantic import masked_mean, patch_distance


def mean_pairwise_cosine(
    tokens_a: torch.Tensor, tokens_b: torch.Tensor, region_a: torch.Tensor, region_b: torch.Tensor
) -> torch.Tensor:
    """``mean_{i ∈ region_a} mean_{j ∈ region_b} cos(a_i, b_j)`` over all pairs of patches.

    ``tokens_a (B, N, D)``, ``tokens_b (B, M, D)``, ``region_a (B, N)``, ``region_b (B, M)``; this
    is 1 − the semantic reward's patch distance (docs/method.md §4) on the same tokens.
    """
    return 1.0 - patch_distance(tokens_a, tokens_b, region_a, region_b)


def patch_similarity_to_style(
    edit_tokens: torch.Tensor, style_tokens: torch.Tensor, edit_region: torch.Tensor, style_region: torch.Tensor
) -> torch.Tensor:
    """``*_gen_sty`` (paper): how much the edited region looks like the style.

    :func:`mean_pairwise_cosine` of the edit's patches in ``edit_region`` (the *input* mask on the
    edit's grid) to the style image's patches in ``style_region`` (the style mask on its grid).
    """
    return mean_pairwise_cosine(edit_tokens, style_tokens, edit_region, style_region)


def patch_similarity_to_background(
    edit_tokens: torch.Tensor, input_tokens: torch.Tensor, background: torch.Tensor
) -> torch.Tensor:
    """``*_gen_input`` (paper): mean over the edit's ``background`` patches of their mean cosine to
    all of the input's ``background`` patches (all pairs, docs/method.md §11).

    ``background (B, N)`` is the complement of the input mask on the shared grid. An unchanged image
    scores the mean self-similarity of its background, below 1 unless the background is uniform.
    """
    return mean_pairwise_cosine(edit_tokens, input_tokens, background, background)


def patch_similarity_locationwise(
    edit_tokens: torch.Tensor, input_tokens: torch.Tensor, background: torch.Tensor
) -> torch.Tensor:
    """``*_gen_input_aligned`` (ours): mean over grid cells in ``background`` of cos(edit cell, same
    input cell); an unchanged image scores exactly the maximum, 1."""
    cos = F.cosine_similarity(edit_tokens.float(), input_tokens.float(), dim=-1)
    return masked_mean(cos, background)


def clip_text_similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """``clip_txt``: cosine of ``(B, D)`` image and text features (raw or normalised alike)."""
    return F.cosine_similarity(image_features.float(), text_features.float(), dim=-1)


def clip_direction_similarity(
    edit_features: torch.Tensor, input_features: torch.Tensor, prompt_features: torch.Tensor, name_features: torch.Tensor
) -> torch.Tensor:
    """``clip_dir`` (paper): cos(image(edit) − image(input), text(prompt) − text(input name)) of the
    features as given, which are the raw ``get_*_features`` outputs (docs/method.md §11); 0 if no change."""
    image_delta = edit_features.float() - input_features.float()
    text_delta = prompt_features.float() - name_features.float()
    return F.cosine_similarity(image_delta, text_delta, dim=-1)


def clip_direction_similarity_normalized(
    edit_features: torch.Tensor, input_features: torch.Tensor, prompt_features: torch.Tensor, name_features: torch.Tensor
) -> torch.Tensor:
    """``clip_dir_normalized`` (ours): :func:`clip_direction_similarity` of the unit-normalised
    features, so the image and text norms do not weigh on the directions."""
    unit = [F.normalize(f.float(), dim=-1) for f in (edit_features, input_features, prompt_features, name_features)]
    return clip_direction_similarity(*unit)


def hps_score(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """``hps_score`` (HPSv2.1): cosine of the open_clip image and text features, as the official
    scorer returns it (about 0.2–0.35; HPSv2's published tables print it × 100)."""
    return clip_text_similarity(image_features, text_features)


def pick_score(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``pick_score`` (PickScore v1): the model's ``exp(logit_scale)`` · cosine."""
    return logit_scale * clip_text_similarity(image_features, text_features)
