"""Image decoding and tensor preprocessing shared by the metrics (images are float in [0, 1]).

Files are decoded with the training data's colour conversion
(:func:`editspecialists.data.images.to_rgb`), so evaluation sees the pixels training saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError

from editspecialists.data.images import to_rgb
from editspecialists.rewards.images import resize


class ImageLoadError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully as RGB, raising :class:`ImageLoadError` naming the file if it is corrupt."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err


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
