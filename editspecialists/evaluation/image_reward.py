"""ImageReward v1.0 scorer, implemented natively in torch so it runs with transformers 5.

The model (Xu et al., 2023) reads an image with a BLIP ViT (ViT-L/16 at 224 px), lets a BERT
text encoder cross-attend from the prompt tokens to the image tokens, and maps the text encoder's
first ([CLS]) output through a 5-layer linear head to a scalar; the scalar is standardised with the
mean/std measured by the authors. Module attribute names follow the official ``ImageReward.pt``
state-dict layout (``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``), so that
checkpoint loads with no key translation; ``med_config.json`` gives the text encoder's sizes. The
vision sizes are not in that file (the original hard-codes ViT-L); an optional ``"vision"`` entry in
it overrides them, which is how tiny test configurations describe their encoder.

``tests/test_image_reward_parity.py`` checks the scores against the official ``image-reward``
package at real size: within 1e-4 on identical tensors, within 1e-2 from PIL images (the official
resizes uint8 images with PIL, we resize float tensors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from editspecialists.rewards.images import normalise, resize

CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35
HEAD_WIDTHS = (1024, 128, 64, 16)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Checkpoint entries the scorer does not use: BLIP's contrastive projections and a position-id buffer.
UNUSED_KEY_PREFIXES = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


@dataclass
class VisionConfig:
    """BLIP ViT sizes; the defaults are ImageReward's ViT-L/16 at 224 px."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0


@dataclass
class TextConfig:
    """The BERT (MED) text-encoder sizes read from ``med_config.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_act: str = "gelu"


def read_configs(med_config_path: str | Path) -> tuple[VisionConfig, TextConfig]:
    """Parse ``med_config.json`` (BERT keys, plus the optional ``"vision"`` override)."""
    raw = json.loads(Path(med_config_path).read_text())
    text_keys = {f.name for f in fields(TextConfig)}
    text = TextConfig(**{k: v for k, v in raw.items() if k in text_keys})
    return VisionConfig(**raw.get("vision", {})), text


class _PatchEmbed(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class _ViTAttention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _ViTMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _ViTBlock(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=1e-6)
        self.attn = _ViTAttention(config.width, config.num_heads)
        self.norm2 = nn.LayerNorm(config.width, eps=1e-6)
        self.mlp = _ViTMlp(config.width, int(config.width * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipVisionEncoder(nn.Module):
    """Pre-norm ViT with a class token; ``(B, 3, S, S)`` normalised images → ``(B, 1 + N, width)``."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = _PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, config.width))
        self.blocks = nn.ModuleList(_ViTBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class _BertEmbeddings(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class _BertProjections(nn.Module):
    """Multi-head attention whose keys/values come from a ``source_width`` sequence."""

    def __init__(self, config: TextConfig, source_width: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(source_width, config.hidden_size)
        self.value = nn.Linear(source_width, config.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(source)), self._heads(self.value(source))
        mask = None if source_mask is None else source_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).flatten(2)


class _BertResidual(nn.Module):
    """``LayerNorm(x + dense(h))``: BERT's output sub-layer."""

    def __init__(self, in_width: int, config: TextConfig):
        super().__init__()
        self.dense = nn.Linear(in_width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(x + self.dense(h))


class _BertAttention(nn.Module):
    def __init__(self, config: TextConfig, source_width: int):
        super().__init__()
        self.self = _BertProjections(config, source_width)
        self.output = _BertResidual(config.hidden_size, config)

    def forward(self, x: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, source, source_mask), x)


class _BertIntermediate(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        if config.hidden_act != "gelu":
            raise ValueError(f"ImageReward text encoder: unsupported hidden_act {config.hidden_act!r}")
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _BertLayer(nn.Module):
    def __init__(self, config: TextConfig, image_width: int):
        super().__init__()
        self.attention = _BertAttention(config, config.hidden_size)
        self.crossattention = _BertAttention(config, image_width)
        self.intermediate = _BertIntermediate(config)
        self.output = _BertResidual(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, token_mask)
        x = self.crossattention(x, image_tokens, None)
        return self.output(self.intermediate(x), x)


class _BertEncoder(nn.Module):
    def __init__(self, config: TextConfig, image_width: int):
        super().__init__()
        self.layer = nn.ModuleList(_BertLayer(config, image_width) for _ in range(config.num_hidden_layers))


class MedTextEncoder(nn.Module):
    """BERT whose every layer cross-attends to image tokens (BLIP's "multimodal" mode)."""

    def __init__(self, config: TextConfig, image_width: int):
        super().__init__()
        self.embeddings = _BertEmbeddings(config)
        self.encoder = _BertEncoder(config, image_width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """``input_ids, attention_mask: (B, L)``, ``image_tokens: (B, N, W)`` → ``(B, L, hidden)``."""
        x = self.embeddings(input_ids)
        token_mask = attention_mask.bool()
        for layer in self.encoder.layer:
            x = layer(x, token_mask, image_tokens)
        return x


class _Blip(nn.Module):
    def __init__(self, vision: VisionConfig, text: TextConfig):
        super().__init__()
        self.visual_encoder = BlipVisionEncoder(vision)
        self.text_encoder = MedTextEncoder(text, vision.width)


class _RewardHead(nn.Module):
    """Linear layers without activations; the parameter-free slots 1, 3, 5 held dropout in training."""

    def __init__(self, width: int):
        super().__init__()
        sizes = (width, *HEAD_WIDTHS)
        linears = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])] + [nn.Linear(HEAD_WIDTHS[-1], 1)]
        self.layers = nn.Sequential(
            linears[0], nn.Identity(), linears[1], nn.Identity(), linears[2], nn.Identity(), linears[3], linears[4]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """The reward network; :meth:`forward` returns standardised rewards ``(B,)``."""

    def __init__(self, vision: VisionConfig, text: TextConfig):
        super().__init__()
        self.vision_config = vision
        self.blip = _Blip(vision, text)
        self.mlp = _RewardHead(text.hidden_size)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``pixels``: CLIP-normalised ``(B, 3, S, S)``; ``input_ids``, ``attention_mask``: ``(B, L)``."""
        image_tokens = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(input_ids, attention_mask, image_tokens)
        reward = self.mlp(text[:, 0].float()).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD


def load_reward_state_dict(model: ImageRewardModel, checkpoint_path: str | Path) -> None:
    """Load ``ImageReward.pt`` into ``model``; a missing or unexpected (used) key raises."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(UNUSED_KEY_PREFIXES)}
    model.load_state_dict(state, strict=True)


def resolve_model_files(model_id: str) -> tuple[Path, Path]:
    """``(ImageReward.pt, med_config.json)`` from a local folder or a hub repo id."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        files = folder / CHECKPOINT_FILE, folder / MED_CONFIG_FILE
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"ImageReward: {file} not found")
        return files
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model_id, CHECKPOINT_FILE)), Path(hf_hub_download(model_id, MED_CONFIG_FILE))


def torchvision_resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The geometry of torchvision's ``Resize(size)`` + ``CenterCrop(size)``, which the official
    preprocessing applies to PIL images, on ``(B, 3, H, W)`` in [0, 1]: the short side becomes
    ``size`` and the long side ``int(size * long / short)`` (truncated), then the crop starts at
    ``round((side - size) / 2)`` (Python's round). Antialiased bicubic, as PIL's. (A rounded long
    side or a floored crop start shifts the crop by a pixel: 0.015 of reward in the parity test.)"""
    height, width = images.shape[-2:]
    long_side = int(size * max(height, width) / min(height, width))
    new_h, new_w = (size, long_side) if height <= width else (long_side, size)
    images = resize(images, (new_h, new_w))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def tokenize_prompts(tokenizer, prompts: Sequence[str]):
    """The official prompt encoding: ``input_ids`` and ``attention_mask`` ``(B, 35)``, each prompt
    padded or truncated to :data:`MAX_PROMPT_TOKENS` (``[CLS]`` and ``[SEP]`` included)."""
    return tokenizer(
        list(prompts), padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
    )


class ImageRewardScorer:
    """Score ``(image, prompt)`` pairs with ImageReward; every image has its own prompt."""

    def __init__(self, model: ImageRewardModel, tokenizer, device: torch.device, dtype: torch.dtype):
        self.model, self.tokenizer, self.device, self.dtype = model, tokenizer, device, dtype

    @classmethod
    def from_pretrained(cls, model_id: str, tokenizer_id: str, *, device="cpu", dtype=torch.float32):
        """Build from ``model_id`` (``THUDM/ImageReward`` or a folder with the same two files)."""
        from transformers import AutoTokenizer

        checkpoint, med_config = resolve_model_files(model_id)
        model = ImageRewardModel(*read_configs(med_config))
        load_reward_state_dict(model, checkpoint)
        model.to(device=device, dtype=dtype).eval()
        return cls(model, AutoTokenizer.from_pretrained(tokenizer_id), torch.device(device), dtype)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → resized and centre-cropped as the official code, normalised."""
        size = self.model.vision_config.image_size
        return normalise(torchvision_resize_center_crop(images, size), CLIP_MEAN, CLIP_STD)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Rewards ``(B,)`` (float32, higher is better) for images ``(B, 3, H, W)`` in [0, 1]."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"ImageReward: {images.shape[0]} images but {len(prompts)} prompts")
        tokens = tokenize_prompts(self.tokenizer, prompts).to(self.device)
        pixels = self.preprocess(images.to(self.device, torch.float32)).to(self.dtype)
        return self.model(pixels, tokens.input_ids, tokens.attention_mask).float()
