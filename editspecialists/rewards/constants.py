"""Per-image constants of a run: what the feedback computes from an input or style image alone.

Only the edits change during a run. The mask of each input and style image (the detector and the
segmenter), each style image's patch tokens (the semantic backbone) and each input's depth map
are the same at every epoch, so they are computed the first time an image is scored and looked up
afterwards (``reward.per_image_constants``; the research code recomputed them for every batch).

Images are identified by an :data:`ImageKey`, their role, file name and size: the key changes
with the preprocessing. Values are kept on the scorer's device: at the default 256 px a mask
takes 64 KB, a depth map 256 KB and DreamSim's style tokens 0.8 MB per image, so a dataset of a
few hundred images holds well under 1 GB.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

ImageKey = tuple[str, str, int, int]  # (role "input" / "style", file name, height, width)
Values = tuple[torch.Tensor, ...]  # per image, one or several tensors (a mask and its fallback flag)


def image_keys(role: str, files: Sequence[str], images: torch.Tensor) -> list[ImageKey]:
    """The keys of ``images`` ``(B, 3, H, W)`` read from ``files`` (file names) in ``role``."""
    height, width = images.shape[-2:]
    return [(role, str(name), int(height), int(width)) for name in files]


class PerImageConstants:
    """``{(kind, image key): values}``, filled by :meth:`lookup` on first use or by :meth:`put`.

    ``kind`` names what is stored and how it was computed (``("depth", model id)``,
    ``("mask", object name)``); ``computed`` counts, per kind, the images computed (not looked up).
    """

    def __init__(self):
        self.values: dict[tuple, Values] = {}
        self.computed: dict[tuple, int] = {}

    def lookup(self, kind: tuple, keys: Sequence[ImageKey], images: torch.Tensor,
               compute: Callable[[torch.Tensor], Values]) -> Values:
        """The values of ``images`` (``(B, ...)`` each, stacked in ``keys`` order): those of keys
        never seen are computed by ``compute(images[missing])`` (once per distinct key, in one
        call) and kept."""
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} image keys for {len(images)} images")
        first_index = {}
        for index, key in enumerate(keys):
            if (kind, key) not in self.values:
                first_index.setdefault(key, index)
        if first_index:
            self.put(kind, list(first_index), compute(images[list(first_index.values())]))
        stored = [self.values[(kind, key)] for key in keys]
        return tuple(torch.stack(parts) for parts in zip(*stored))

    def put(self, kind: tuple, keys: Sequence[ImageKey], values: Values) -> None:
        """Keep ``values`` (each ``(n, ...)``) for the ``n`` ``keys``."""
        for index, key in enumerate(keys):
            self.values[(kind, key)] = tuple(value[index] for value in values)
        self.computed[kind] = self.computed.get(kind, 0) + len(keys)
