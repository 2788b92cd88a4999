"""The benchmark's model sizes: tiny (CI), small (CPU) and sd15 (the real SD-1.5 / InstructPix2Pix
architecture with random weights), each with its default workload."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from editspecialists.demo.cache import cached_build
from editspecialists.demo.policy_standin import (IP2P_SCHEDULER_CONFIG, byte_level_clip_tokenizer, tiny_ip2p,
                                                 write_ip2p_scheduler_config)


@dataclass(frozen=True)
class ModelSize:
    """A benchmark model and its default workload (image side in pixels, steps, batch, nb_gen,
    timed repeats: more where a run is short and noisy)."""

    name: str
    folder: Callable[[Path], Path]  # cache root -> saved pipeline folder (built on first use)
    resolution: int
    steps: int
    batch: int
    nb_gen: int
    repeats: int


def _save_ip2p_pipeline(folder: Path, unet, vae, text_encoder) -> None:
    """Save an InstructPix2Pix pipeline around the given modules with IP2P's scheduler."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    scheduler = EulerAncestralDiscreteScheduler.from_config(IP2P_SCHEDULER_CONFIG)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=byte_level_clip_tokenizer(), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    write_ip2p_scheduler_config(folder)


def _sd_layout_unet(block_out_channels, cross_attention_dim: int, sample_size: int):
    """SD-1.5 UNet layout (3 cross-attention down blocks + 1 plain, 2 layers, 8 heads), 8 inputs."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=8,
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )


def _sd_layout_vae(block_out_channels, sample_size: int):
    """SD-1.5 VAE layout: 4 encoder/decoder blocks (8x downsampling), 2 layers, 4 latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels,
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
    )


def _clip_text_encoder(hidden_size: int, layers: int, heads: int, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        hidden_act="quick_gelu", projection_dim=hidden_size, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def build_small_ip2p(folder: Path, seed: int = 0) -> None:
    """SD-1.5 block layout with narrow channels (UNet 32-64-64-64, VAE 32-64-64-64, text dim 64)."""
    torch.manual_seed(seed)
    text_encoder = _clip_text_encoder(hidden_size=64, layers=2, heads=4, vocab_size=1000)
    unet = _sd_layout_unet((32, 64, 64, 64), cross_attention_dim=64, sample_size=8)
    _save_ip2p_pipeline(folder, unet, _sd_layout_vae((32, 64, 64, 64), sample_size=64), text_encoder)


def build_sd15_ip2p(folder: Path, seed: int = 0) -> None:
    """The real SD-1.5 / InstructPix2Pix architecture (UNet 320-640-1280-1280 with 8 input
    channels and cross-attention dim 768, VAE 128-256-512-512, CLIP-L text encoder), random weights."""
    torch.manual_seed(seed)
    text_encoder = _clip_text_encoder(hidden_size=768, layers=12, heads=12, vocab_size=49408)
    unet = _sd_layout_unet((320, 640, 1280, 1280), cross_attention_dim=768, sample_size=64)
    _save_ip2p_pipeline(folder, unet, _sd_layout_vae((128, 256, 512, 512), sample_size=512), text_encoder)


SIZES = {
    "tiny": ModelSize("tiny", tiny_ip2p, resolution=8, steps=10, batch=2, nb_gen=2, repeats=9),
    "small": ModelSize("small", lambda root: cached_build(root / "bench-small-ip2p", build_small_ip2p),
                       resolution=64, steps=10, batch=2, nb_gen=2, repeats=5),
    "sd15": ModelSize("sd15", lambda root: cached_build(root / "bench-sd15-ip2p", build_sd15_ip2p),
                      resolution=256, steps=20, batch=4, nb_gen=2, repeats=5),
}
