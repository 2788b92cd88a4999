"""The floating-point formats that configs and flags name: "fp32", "fp16", "bf16"."""

from __future__ import annotations

from contextlib import nullcontext

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_named(name: str, key: str) -> torch.dtype:
    """The torch dtype called ``name``; a ``ValueError`` naming the setting ``key`` otherwise."""
    if name not in DTYPES:
        raise ValueError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


# accelerate's ``mixed_precision`` names ("no" = full precision) and our dtype names.
MIXED_PRECISION = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}


def mixed_precision_dtype(name: str) -> torch.dtype:
    """The autocast dtype of accelerate's ``mixed_precision`` setting; a ``ValueError`` naming it otherwise."""
    if name not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {sorted(MIXED_PRECISION)}, got {name!r}")
    return DTYPES[MIXED_PRECISION[name]]


def cuda_autocast(enabled: bool, device: torch.device, dtype: torch.dtype = torch.float16):
    """Autocast to ``dtype`` on a CUDA ``device`` when ``enabled`` (the original's generate.py and
    HPS scorer ran under ``torch.autocast("cuda")``, fp16); no autocast elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()
