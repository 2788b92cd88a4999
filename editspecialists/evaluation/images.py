"""Image loading and tensor preprocessing shared by the metrics (images are float in [0, 1])."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

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


def resize_center_crop(images: torch.Tensor, size: int | Sequence[int], mode: str = "bicubic") -> torch.Tensor:
    """Resize ``(B, 3, H, W)`` so it covers ``size`` (int: square) keeping aspect, then centre-crop.

    Antialiased; bicubic overshoot is clamped back to [0, 1].
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = images.shape[-2:]
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode=mode, antialias=True, align_corners=False)
        images = images.clamp(0, 1)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return images[..., top : top + out_h, left : left + out_w]


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Channel-wise ``(x - mean) / std`` for ``(B, 3, H, W)``."""
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
