"""Image decoding and tensor preprocessing shared by the metrics (images are float in [0, 1]).

Files are decoded as the training data is (:func:`editspecialists.data.images.read_rgb`: EXIF
orientation, colour conversion, size limit), so evaluation sees the pixels training saw.
"""

from __future__ import annotations

from typing import Sequence

import torch

from editspecialists.rewards.images import resize


def resize_center_crop(images: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize tensors ``(B, 3, H, W)`` so they cover ``size`` (int: square) keeping aspect, then
    centre-crop: the feature models' preprocessing and the alignment of inputs to edits.

    Antialiased bicubic, clamped to [0, 1] (:func:`editspecialists.rewards.images.resize`).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = images.shape[-2:]
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    images = resize(images, (new_h, new_w))
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return images[..., top : top + out_h, left : left + out_w]
