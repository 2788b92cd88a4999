"""Reading user image folders into tensors: validation, orientation, colour conversion, resize
and crop."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Largest image accepted, in pixels: Pillow's own default threshold (Image.MAX_IMAGE_PIXELS, about
# 89.5 megapixels, e.g. 9459 x 9459), above which it warns of a decompression bomb (and refuses
# above twice it). Larger files are skipped like unreadable ones, with the reason.
MAX_IMAGE_PIXELS = 89_478_485

T = TypeVar("T")


class UnreadableImageError(ValueError):
    """An image file that cannot be used (not an image, corrupt or truncated, or larger than
    :data:`MAX_IMAGE_PIXELS`); the message names the file and why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.reason = reason


def is_image_file(path: Path) -> bool:
    """A file with a .jpg/.jpeg/.png suffix (any case)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def folder_label(folder: str | Path, role: str, key: str = "") -> str:
    """How errors name an image folder: ``--config.inputimg_dir: input image folder data/cars``
    (``key``: the config key the folder comes from; without one, the folder alone)."""
    return f"{f'--config.{key}: ' if key else ''}{role} folder {folder}"


def list_images(folder: str | Path, role: str = "image", key: str = "") -> list[Path]:
    """Sorted .jpg/.jpeg/.png files of ``folder``; a clear error, naming the config key ``key``
    when given, if it is missing or has none. Files that are links to places outside the folder
    are used, and named in one warning."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder_label(folder, role, key)} does not exist")
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not files:
        raise ValueError(f"{folder_label(folder, role, key)} holds no .jpg/.jpeg/.png image")
    outside = [f"{p.name} -> {p.resolve()}" for p in files if p.is_symlink()
               and not p.resolve().is_relative_to(folder.resolve())]
    if outside:
        logger.warning("%d %s file(s) in %s link to files outside it (used as they are): %s", len(outside), role,
                       folder, "; ".join(outside))
    return files


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL image: alpha composited on white, grey expanded, 16-bit rescaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode != "F" and values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / peak * 255.0, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


# The filters of ``resize_filter`` (Pillow's, antialiased when shrinking): "bilinear", torchvision's
# Resize on PIL images as the original's transforms used it; "bicubic", ours before issue 27.
RESIZE_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
DEFAULT_RESIZE_FILTER = "bilinear"


def resize_center_crop(image: Image.Image, size: int, resize_filter: str = DEFAULT_RESIZE_FILTER) -> Image.Image:
    """The short side resized to ``size`` (up or down), then the central square cropped: with
    "bilinear", exactly torchvision's ``Resize(size)`` + ``CenterCrop(size)`` (the original's
    training, generation and evaluation transform)."""
    return resize_cover(image, (size, size), resize_filter)


def resize_cover(image: Image.Image, size: tuple[int, int], resize_filter: str = DEFAULT_RESIZE_FILTER) -> Image.Image:
    """Resize (aspect kept) to cover ``size`` = (W, H), then crop the centre to it, in torchvision's
    arithmetic: the side that fits gets its target, the other ``int(target · side / fitted side)``
    (truncated); the crop offsets are rounded halves."""
    width, height = size
    if width * image.height >= height * image.width:  # the width fits, the height overhangs
        covering = (width, max(height, int(width * image.height / image.width)))
    else:
        covering = (max(width, int(height * image.width / image.height)), height)
    image = resize_to(image, covering, resize_filter)
    left, top = int(round((image.width - width) / 2.0)), int(round((image.height - height) / 2.0))
    return image.crop((left, top, left + width, top + height))


def resize_to(image: Image.Image, size: tuple[int, int], resize_filter: str = DEFAULT_RESIZE_FILTER) -> Image.Image:
    """``image`` resized to ``size`` = (W, H) with a :data:`RESIZE_FILTERS` filter; the same image
    when it has that size already."""
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter must be one of {list(RESIZE_FILTERS)}, got {resize_filter!r}")
    return image if image.size == tuple(size) else image.resize(size, RESIZE_FILTERS[resize_filter])


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB PIL image."""
    array = (tensor.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def read_rgb(path: str | Path, max_side: int | None = None) -> Image.Image:
    """Decode ``path`` fully as an upright RGB image (its EXIF orientation applied, :func:`to_rgb`);
    with ``max_side``, downsized on load so that its longer side is at most ``max_side`` (a JPEG
    is decoded at a reduced scale: the full-size pixels are never held).

    Raises :class:`UnreadableImageError` naming the file for anything that is not a complete image
    of at most :data:`MAX_IMAGE_PIXELS` pixels; the size is checked from the header, before decoding.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below instead
            with Image.open(path) as image:
                width, height = image.size
                if width * height <= MAX_IMAGE_PIXELS:
                    if max_side:
                        image.draft("RGB", (max_side, max_side))
                    image.load()
                    ImageOps.exif_transpose(image, in_place=True)
                    if max_side:
                        image.thumbnail((max_side, max_side), Image.BICUBIC)
                    return to_rgb(image)
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(path, f"more than twice the limit of {MAX_IMAGE_PIXELS} pixels "
                                         f"(data.images.MAX_IMAGE_PIXELS): {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(path, f"{error.__class__.__name__}: {error}") from error
    raise UnreadableImageError(path, f"{width}x{height} pixels, more than the limit of {MAX_IMAGE_PIXELS} "
                                     f"(data.images.MAX_IMAGE_PIXELS)")


def load_image(path: str | Path, size: int | None = None, resize_filter: str = DEFAULT_RESIZE_FILTER) -> torch.Tensor:
    """One image file -> (3, size, size) tensor in [0, 1] (:func:`resize_center_crop`; original
    size when ``size`` is None)."""
    image = read_rgb(path)
    if size is not None:
        image = resize_center_crop(image, size, resize_filter)
    return image_to_tensor(image)


def read_each_image(folder: str | Path, role: str, read: Callable[[Path], T],
                    select: Callable[[str], bool] | None = None, key: str = "") -> tuple[list[Path], list[T]]:
    """``read`` of every image file of ``folder`` (sorted) whose name ``select`` accepts (default:
    all); files it cannot read are skipped.

    One warning names every skipped file and why; a folder with no usable image is an error
    (naming the config key ``key`` when given).
    """
    files, results, skipped = [], [], []
    for path in [p for p in list_images(folder, role, key) if select is None or select(p.name)]:
        try:
            results.append(read(path))
            files.append(path)
        except UnreadableImageError as error:
            skipped.append(f"{path.name} ({error.reason})")
    if skipped:
        logger.warning("skipped %d unreadable %s file(s) in %s: %s", len(skipped), role, folder, "; ".join(skipped))
    if not files:
        raise ValueError(f"{folder_label(folder, role, key)} has no readable image (skipped: {'; '.join(skipped)})")
    return files, results


def readable_images(folder: str | Path, role: str = "image", select: Callable[[str], bool] | None = None,
                    key: str = "") -> list[Path]:
    """The image files of ``folder`` (those whose names ``select`` accepts) that decode
    (:func:`read_rgb`), skipped ones named in one warning; errors name the config key ``key``
    when given."""
    return read_each_image(folder, role, read_rgb, select, key)[0]


def load_image_folder(folder: str | Path, size: int, role: str = "image",
                      select: Callable[[str], bool] | None = None, key: str = "",
                      resize_filter: str = DEFAULT_RESIZE_FILTER) -> tuple[list[Path], torch.Tensor]:
    """The readable images of ``folder`` whose file names ``select`` accepts (default: all), as
    (N, 3, size, size) (:func:`load_image`); unreadable files are skipped.

    One warning names every skipped file; a folder with no usable image is an error (naming the
    config key ``key`` when given).
    """
    files, tensors = read_each_image(folder, role, lambda path: load_image(path, size, resize_filter), select, key)
    return files, torch.stack(tensors)
