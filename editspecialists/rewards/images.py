"""Tensor image helpers shared by the feedback models (images are float ``(B, 3, H, W)`` in [0, 1])."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


LAYOUTS = {4: "(B, 3, H, W)", 5: "(B, G, 3, H, W)"}


def check_images(images: torch.Tensor, name: str = "images", ndim: int = 4) -> None:
    """Raise ``ValueError`` naming ``name`` unless it is a non-empty float RGB tensor laid out as
    ``LAYOUTS[ndim]`` (images, or edits per input) with values in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != ndim or images.shape[-3] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must have shape {LAYOUTS[ndim]}, got {got}")
    check_unit_range(images, name)


def check_unit_range(images: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if it is empty, not floating, or has values outside [0, 1]."""
    if images.numel() == 0:
        raise ValueError(f"{name} is empty: {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got {images.dtype}")
    low, high = torch.stack(torch.aminmax(images.detach())).float().tolist()  # one host sync
    if not (0.0 <= low and high <= 1.0):  # NaN fails both comparisons
        raise ValueError(f"{name} has values outside [0, 1] (min {low:.4g}, max {high:.4g})")


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of ``(B, 3, H, W)`` to ``size`` (h, w); overshoot clamped to [0, 1]."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    resized = F.interpolate(images, size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Channel-wise ``(x − mean) / std`` of ``(B, 3, H, W)``."""
    mean_t = torch.as_tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
