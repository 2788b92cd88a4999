"""The stand-in InstructPix2Pix pipeline: tiny, randomly initialised, built from configs only.

It is saved with ``save_pretrained``, so tests and the demo load it back through exactly the
``from_pretrained`` code that production uses with hub ids. Builds are seeded and cached (see
:mod:`editspecialists.demo.cache`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from editspecialists.demo.cache import cached_build, default_cache_root


def byte_level_clip_tokenizer():
    """A CLIP BPE tokenizer over the 256 byte symbols (each also as an end-of-word symbol).

    Ids 0 and 1 are ``<|startoftext|>`` and ``<|endoftext|>`` (also the pad token), matching the
    tiny CLIP text configs below.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("a", "n")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab.setdefault("the</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="<|endoftext|>")


def tiny_clip_text_config(vocab_size: int, hidden_size: int = 32):
    """A 2-layer CLIP text encoder config for the tiny pipelines."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


# scheduler/scheduler_config.json of timbrooks/instruct-pix2pix, verbatim (tests/fixtures/hub):
# no timestep_spacing key (diffusers' default applies), steps_offset 1, and keys of other
# schedulers left over from its conversion.
IP2P_SCHEDULER_CONFIG = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "_diffusers_version": "0.12.0.dev0",
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "dynamic_thresholding_ratio": 0.995,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 1,
    "thresholding": False,
    "trained_betas": None,
}


def ip2p_feature_extractor():
    """The pipeline's ``feature_extractor`` (a ``CLIPImageProcessor``, unused without a safety
    checker); its settings in the real repo were not seen: transformers' defaults."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor()


def write_ip2p_scheduler_config(folder: Path) -> None:
    """Replace the saved scheduler config by the real repo's file (:data:`IP2P_SCHEDULER_CONFIG`)."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(IP2P_SCHEDULER_CONFIG, indent=2) + "\n")


def build_tiny_ip2p(folder: Path, seed: int = 0) -> None:
    """Save a tiny ``StableDiffusionInstructPix2PixPipeline`` (8-channel UNet, 2-block VAE) with
    the components of ``timbrooks/instruct-pix2pix`` (``model_index.json`` classes) and its
    scheduler config verbatim."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer()
    text_encoder = CLIPTextModel(tiny_clip_text_config(len(tokenizer.get_vocab())))
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_encoder.config.hidden_size,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    scheduler = EulerAncestralDiscreteScheduler.from_config(IP2P_SCHEDULER_CONFIG)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=ip2p_feature_extractor(),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    write_ip2p_scheduler_config(folder)


def tiny_ip2p(root: Path | None = None) -> Path:
    """Folder of the cached tiny InstructPix2Pix pipeline (built on first use)."""
    root = Path(root) if root else default_cache_root()
    return cached_build(root / "instruct-pix2pix", build_tiny_ip2p)
