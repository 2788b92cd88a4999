"""What the detector and the segmenter made of the run's images: ``<run>/masks/``.

The most common way for a real run to go wrong is a name the detector does not find in the
images (the semantic score then measures the whole frame). At the start of a run every input and
style image is written with its mask overlaid and the detector's boxes and scores drawn
(``<role>_<file name>.png``), with one line per image in ``masks.jsonl``: file, role, name, boxes
(xyxy pixels of the scored image), scores and whether the mask is the fallback's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from editspecialists.data.images import tensor_to_image

MASKS_FOLDER = "masks"
MASKS_FILE = "masks.jsonl"
MASK_TINT = (255, 40, 40)


@dataclass
class MaskRecord:
    """One image's detection: ``boxes`` ``[[x0, y0, x1, y1], ...]`` in pixels, ``scores`` one per box."""

    file: str
    role: str
    name: str
    boxes: list[list[float]]
    scores: list[float]
    fallback: bool

    @property
    def overlay_name(self) -> str:
        return f"{self.role}_{self.file}.png"


def overlay(image: torch.Tensor, mask: torch.Tensor, record: MaskRecord, alpha: float = 0.45) -> Image.Image:
    """``image`` (3, H, W) in [0, 1] with ``mask`` (H, W) bool tinted, the boxes outlined with their
    scores, and the fallback stated."""
    picture = tensor_to_image(image)
    tint = Image.new("RGB", picture.size, MASK_TINT)
    shade = Image.fromarray((mask.cpu().numpy() * int(alpha * 255)).astype("uint8"), mode="L")
    picture = Image.composite(tint, picture, shade)
    draw = ImageDraw.Draw(picture)
    for box, score in zip(record.boxes, record.scores):
        draw.rectangle(box, outline=(255, 255, 0), width=2)
        draw.text((box[0] + 3, box[1] + 2), f"{score:.2f}", fill=(255, 255, 0))
    if record.fallback:
        draw.text((3, 3), f"no {record.name!r} found: fallback mask", fill=(255, 255, 255))
    return picture


def write_mask_preview(run_dir: Path, records: list[MaskRecord], images: list[torch.Tensor],
                       masks: list[torch.Tensor]) -> Path:
    """Write ``<run>/masks/``: one overlay per record (``images[i]`` and ``masks[i]`` are its
    image and mask) and ``masks.jsonl``; returns the folder."""
    folder = Path(run_dir) / MASKS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for record, image, mask in zip(records, images, masks):
        overlay(image, mask, record).save(folder / record.overlay_name)
    lines = [json.dumps({**asdict(record), "overlay": record.overlay_name}) + "\n" for record in records]
    (folder / MASKS_FILE).write_text("".join(lines))
    return folder


def detection_summary(records: list[MaskRecord], folder: Path) -> str:
    """The start-up line: per role, in how many images the detector found the name."""
    parts = []
    for role in dict.fromkeys(r.role for r in records):
        mine = [r for r in records if r.role == role]
        missed = sum(r.fallback for r in mine)
        parts.append(f"no {mine[0].name!r} found in {missed} of {len(mine)} {role.replace('_', '-')} images")
    fraction = sum(r.fallback for r in records) / max(1, len(records))
    return f"masks: {'; '.join(parts)} (fraction without a detection {fraction:.2f}); look at {folder}"
