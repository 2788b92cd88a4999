"""Image loading and tensor preprocessing shared by the metrics (images are float in [0, 1])."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from editspecialists.rewards.images import resize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageLoadError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully as RGB, raising :class:`ImageLoadError` naming the file if it is corrupt."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] → PIL RGB."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def resize_center_crop(images: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize ``(B, 3, H, W)`` so it covers ``size`` (int: square) keeping aspect, then centre-crop.

    Antialiased bicubic, clamped to [0, 1] (:func:`editspecialists.rewards.images.resize`).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = images.shape[-2:]
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    images = resize(images, (new_h, new_w))
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return images[..., top : top + out_h, left : left + out_w]
