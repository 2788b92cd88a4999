"""Metric definitions of SPEC §8 as pure tensor functions (one per metric family; higher-level
loading lives in :mod:`editspecialists.evaluation.families`).

Shapes: ``B`` images, ``N``/``M`` patch tokens of dimension ``D``; masks are bool ``(B, N)`` on the
patch grid (already falling back to all-ones where empty). Every function returns ``(B,)`` float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from editspecialists.rewards.semantic import masked_mean, patch_distance


def patch_similarity_to_style(
    edit_tokens: torch.Tensor, style_tokens: torch.Tensor, edit_region: torch.Tensor, style_region: torch.Tensor
) -> torch.Tensor:
    """``*_gen_sty``: how much the edited region looks like the style.

    ``mean_{i ∈ edit_region} mean_{j ∈ style_region} cos(edit_i, style_j)`` with ``edit_tokens
    (B, N, D)``, ``style_tokens (B, M, D)``; ``edit_region`` is the *input* mask on the edit's grid,
    ``style_region`` the style mask on the style image's grid. This is 1 − the semantic reward's
    patch distance (SPEC §4) on the same tokens.
    """
    return 1.0 - patch_distance(edit_tokens, style_tokens, edit_region, style_region)


def patch_similarity_locationwise(
    edit_tokens: torch.Tensor, input_tokens: torch.Tensor, region: torch.Tensor
) -> torch.Tensor:
    """``*_gen_input``: mean over grid cells in ``region`` of cos(edit cell, same input cell).

    ``region`` is the complement of the input mask (the background that should be preserved);
    an unchanged image scores exactly the maximum, 1.
    """
    cos = F.cosine_similarity(edit_tokens.float(), input_tokens.float(), dim=-1)
    return masked_mean(cos, region)


def clip_text_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``clip_txt``: cosine of normalised ``(B, D)`` image and text embeddings."""
    return (image_embeds * text_embeds).sum(-1)


def clip_direction_similarity(
    edit_embeds: torch.Tensor, input_embeds: torch.Tensor, prompt_embeds: torch.Tensor, name_embeds: torch.Tensor
) -> torch.Tensor:
    """``clip_dir``: cos(text(prompt) − text(input name), image(edit) − image(input)); 0 if no change."""
    return F.cosine_similarity(edit_embeds - input_embeds, prompt_embeds - name_embeds, dim=-1)


def hps_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``hps_score`` (HPSv2.1): cosine of the normalised open_clip embeddings, as the official
    scorer returns it (about 0.2–0.35; HPSv2's published tables print it × 100)."""
    return clip_text_similarity(image_embeds, text_embeds)


def pick_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``pick_score`` (PickScore v1): the model's ``exp(logit_scale)`` · cosine."""
    return logit_scale * clip_text_similarity(image_embeds, text_embeds)
