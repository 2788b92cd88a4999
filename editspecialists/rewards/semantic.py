"""Semantic score of docs/method.md §4 as pure tensor functions (no model).

Shapes: ``B`` images, ``N`` edit patches and ``M`` style patches of dimension ``D``; pixel masks
are bool ``(B, H, W)``, grid masks bool ``(B, N)`` in row-major patch order. Every score is
``(B,)`` float32. An empty mask (no patch or pixel selected) stands for the whole image, so no
score is ever NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def whole_if_empty(mask: torch.Tensor) -> torch.Tensor:
    """``mask (B, ...)`` bool with every all-False row replaced by all-True."""
    flat = mask.flatten(1)
    empty = ~flat.any(dim=1, keepdim=True)
    return (flat | empty).view_as(mask)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values (B, ..., N)`` over the last dim where ``mask (B, ..., N)``; empty → all."""
    weights = whole_if_empty(mask).to(values.dtype)
    return (values * weights).sum(-1) / weights.sum(-1)


def downsample_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel mask ``(B, H, W)`` → grid mask ``(B, gh·gw)`` (nearest); empty rows become all-True."""
    small = F.interpolate(mask[:, None].float(), size=tuple(grid), mode="nearest")[:, 0] > 0.5
    return whole_if_empty(small.flatten(1))


def patch_distance(
    edit_tokens: torch.Tensor,
    style_tokens: torch.Tensor,
    edit_grid_mask: torch.Tensor,
    style_grid_mask: torch.Tensor,
) -> torch.Tensor:
    """``mean_{i ∈ edit mask} mean_{j ∈ style mask} (1 − cos(e_i, s_j))`` per image, ``(B,)``.

    ``edit_tokens (B, N, D)``, ``style_tokens (B, M, D)``; ``edit_grid_mask (B, N)`` is the
    *input* mask on the edit's grid (the region that should change), ``style_grid_mask (B, M)``
    the style mask on the style image's grid.
    """
    edits = F.normalize(edit_tokens.float(), dim=-1)
    styles = F.normalize(style_tokens.float(), dim=-1)
    distance = 1.0 - edits @ styles.transpose(1, 2)  # (B, N, M)
    to_style = masked_mean(distance, style_grid_mask[:, None, :].expand_as(distance))  # (B, N)
    return masked_mean(to_style, edit_grid_mask)


def reconstruction_outside(edits: torch.Tensor, inputs: torch.Tensor, input_masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel MSE (mean over RGB) between ``edits`` and ``inputs (B, 3, H, W)`` averaged over
    the pixels outside ``input_masks (B, H, W)``; an empty outside uses the whole image. ``(B,)``."""
    squared_error = (edits.float() - inputs.float()).pow(2).mean(dim=1).flatten(1)  # (B, H·W)
    return masked_mean(squared_error, ~input_masks.flatten(1))


def semantic_score(
    edit_tokens: torch.Tensor,
    style_tokens: torch.Tensor,
    edit_grid_mask: torch.Tensor,
    style_grid_mask: torch.Tensor,
    reconstruction: torch.Tensor | None = None,
    rec_lambda: float = 0.5,
) -> torch.Tensor:
    """:func:`patch_distance` + ``rec_lambda`` · ``reconstruction`` (the ``(B,)`` output of
    :func:`reconstruction_outside`); without ``reconstruction`` the patch distance alone. ``(B,)``."""
    score = patch_distance(edit_tokens, style_tokens, edit_grid_mask, style_grid_mask)
    if reconstruction is None:
        return score
    return score + rec_lambda * reconstruction.float()
