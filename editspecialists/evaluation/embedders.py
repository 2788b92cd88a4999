"""Global image/text embedders of the CLIP family used by the evaluation metrics.

- :class:`ClipEmbedder` (transformers ``CLIPModel`` + ``AutoProcessor``): eval CLIP (clip_txt,
  clip_dir) and PickScore.
- :class:`OpenClipEmbedder` (open_clip model + checkpoint file): HPSv2.1.

Both take images ``(B, 3, H, W)`` float in [0, 1]; ``embed_*`` return L2-normalised float32
embeddings, :meth:`ClipEmbedder.image_features` / ``text_features`` the raw ones (``clip_dir``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from editspecialists.evaluation.images import resize_center_crop
from editspecialists.rewards.images import normalise


def resolve_file(spec: str) -> Path:
    """A local file path, or ``"<hub repo>:<file name>"`` downloaded with ``hf_hub_download``."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if ":" not in spec:
        raise FileNotFoundError(f"{spec} is neither a local file nor '<hub repo>:<file name>'")
    from huggingface_hub import hf_hub_download

    repo, filename = spec.split(":", 1)
    return Path(hf_hub_download(repo, filename))


class ClipEmbedder:
    """A transformers CLIP model with its processor; ``logit_scale`` is the model's exp(scale)."""

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.logit_scale = model.logit_scale.detach().exp().item()

    @classmethod
    def from_pretrained(cls, model_id: str, processor_id: str | None = None, *, device="cpu", dtype=torch.float32):
        from transformers import AutoProcessor, CLIPModel

        model = CLIPModel.from_pretrained(model_id, dtype=dtype).to(device).eval()
        processor = AutoProcessor.from_pretrained(processor_id or model_id)
        return cls(model, processor, torch.device(device), dtype)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → raw ``get_image_features`` output ``(B, D)`` float32.
        Images are already scaled: no second /255."""
        pixels = self.processor.image_processor(
            images=list(images.float().cpu()), do_rescale=False, return_tensors="pt"
        ).pixel_values
        return self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)).pooler_output.float()

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """``B`` strings → raw ``get_text_features`` output ``(B, D)`` float32 (truncated to the
        model's context length)."""
        tokens = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        features = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return features.pooler_output.float()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`image_features`, L2-normalised."""
        return F.normalize(self.image_features(images), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """:meth:`text_features`, L2-normalised."""
        return F.normalize(self.text_features(texts), dim=-1)


def register_open_clip_architecture(architecture: str) -> str:
    """Model name for ``open_clip.create_model``; a ``.json`` config file is registered first."""
    import open_clip

    path = Path(architecture).expanduser()
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config {path} not found")
        open_clip.add_model_config(path)
        return path.stem
    return architecture


class OpenClipEmbedder:
    """An open_clip model whose weights come from one checkpoint file (e.g. HPSv2.1)."""

    def __init__(self, model, tokenizer, device: torch.device, dtype: torch.dtype):
        import open_clip

        self.model, self.tokenizer, self.device, self.dtype = model, tokenizer, device, dtype
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"]
        self.image_size = size if isinstance(size, int) else tuple(size)
        self.mean, self.std = cfg["mean"], cfg["std"]

    @classmethod
    def from_checkpoint(cls, architecture: str, checkpoint: str, *, device="cpu", dtype=torch.float32):
        """``architecture``: an open_clip name or a model-config ``.json``; ``checkpoint``: see
        :func:`resolve_file`. The checkpoint replaces every weight, so nothing else is downloaded."""
        import open_clip

        name = register_open_clip_architecture(architecture)
        model = open_clip.create_model(name, pretrained=None)
        open_clip.load_checkpoint(model, str(resolve_file(checkpoint)))
        model.to(device=device, dtype=dtype).eval()
        return cls(model, open_clip.get_tokenizer(name), torch.device(device), dtype)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → ``(B, D)``: bicubic short-side resize, centre crop, normalise."""
        pixels = normalise(resize_center_crop(images.float().to(self.device), self.image_size), self.mean, self.std)
        return F.normalize(self.model.encode_image(pixels.to(self.dtype)).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)
