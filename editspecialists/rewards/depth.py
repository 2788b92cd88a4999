"""Structural score of docs/method.md §4: relative depth (Depth Anything V2) of input and edit compared.

Preprocessing runs in torch on the model's device for the whole batch, as the original's depth
transform: resize (bilinear) so the short side reaches the processor's size (518 for Depth
Anything V2) keeping the aspect ratio, both sides rounded to a multiple of the patch size (14),
ImageNet normalisation; the predicted depth map is resized back to the input's ``H × W`` bilinear
with ``align_corners=True``. (transformers' own processor and post-processing use bicubic.)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from editspecialists.rewards.images import check_images, normalise

ALIGNMENTS = ("none", "scale_shift")


def depth_input_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """Size whose short side is ``short_side`` (aspect kept), each side the nearest multiple of ``multiple``."""
    scale = short_side / min(height, width)
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (height, width))


def bilinear_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The original's depth input resize of ``(B, 3, H, W)`` to ``size`` (h, w): bilinear,
    ``align_corners=False``, antialiased only when shrinking (the original only ever enlarged its
    256 px images to 518, where torch's antialiasing would move values by ~1e-5)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrinking)


class DepthEstimator:
    """Relative depth ``(B, H, W)`` float32 of images ``(B, 3, H, W)`` in [0, 1] (larger = nearer)."""

    def __init__(self, model, short_side: int, multiple: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, dtype: torch.dtype):
        self.model, self.short_side, self.multiple = model, short_side, multiple
        self.mean, self.std, self.device, self.dtype = mean, std, device, dtype

    @classmethod
    def from_pretrained(cls, model_id: str, *, device="cpu", dtype: torch.dtype = torch.float32) -> "DepthEstimator":
        """Model and preprocessing constants (size, multiple, mean, std) from ``model_id``'s folder/hub repo."""
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        processor = AutoImageProcessor.from_pretrained(model_id)
        model = AutoModelForDepthEstimation.from_pretrained(model_id, dtype=dtype).to(device).eval()
        short_side = min(processor.size["height"], processor.size["width"])
        multiple = getattr(processor, "ensure_multiple_of", None) or 1
        return cls(model, short_side, multiple, processor.image_mean, processor.image_std, torch.device(device), dtype)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → normalised pixels at the model's input size, on the device."""
        size = depth_input_size(*images.shape[-2:], self.short_side, self.multiple)
        pixels = bilinear_resize(images.to(self.device, torch.float32), size)
        return normalise(pixels, self.mean, self.std).to(self.dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        return self.depth(images)

    def depth(self, images: torch.Tensor) -> torch.Tensor:
        """Depth ``(B, H, W)`` float32 of ``images``, with autograd (what ``__call__`` runs)."""
        depth = self.model(pixel_values=self.preprocess(images)).predicted_depth  # (B, h, w)
        restored = F.interpolate(depth[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=True)
        return restored[:, 0]


def align_scale_shift(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``s · source + t`` with per-image ``(s, t)`` minimising the squared error to ``target``.

    ``source``, ``target``: ``(B, H, W)``. A constant ``source`` gets ``s = 0`` (``t`` = mean target).
    """
    x, y = source.flatten(1).float(), target.flatten(1).float()
    x_centred, y_centred = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    variance = x_centred.pow(2).mean(1, keepdim=True)
    covariance = (x_centred * y_centred).mean(1, keepdim=True)
    scale = torch.where(variance > 0, covariance / variance.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
    shift = y.mean(1, keepdim=True) - scale * x.mean(1, keepdim=True)
    return (scale * x + shift).view_as(source)


def structural_score(depth_input: torch.Tensor, depth_edit: torch.Tensor, align: str = "none") -> torch.Tensor:
    """Mean |depth_input − depth_edit| over pixels, ``(B,)`` float32; depth maps ``(B, H, W)``.

    ``align="scale_shift"`` first fits the edit's depth to the input's by least squares (relative
    depth is defined up to scale and shift); ``"none"`` compares raw outputs (faithful default).
    """
    if align not in ALIGNMENTS:
        raise ValueError(f"structural align must be one of {ALIGNMENTS}, got {align!r}")
    if depth_input.shape != depth_edit.shape:
        raise ValueError(f"depth maps differ in shape: input {tuple(depth_input.shape)}, "
                         f"edit {tuple(depth_edit.shape)}")
    if align == "scale_shift":
        depth_edit = align_scale_shift(depth_edit, depth_input)
    return (depth_input.float() - depth_edit.float()).abs().flatten(1).mean(1)
