"""The stand-in FLUX.1 Kontext [dev] pipeline: tiny, randomly initialised, built from configs only.

It carries the identity of ``black-forest-labs/FLUX.1-Kontext-dev``: the same component classes
(``FluxKontextPipeline`` with ``FluxTransformer2DModel``, ``AutoencoderKL``, CLIP-L and T5-XXL text
towers, ``CLIPTokenizer`` and ``T5TokenizerFast``), the same non-size config fields, the VAE's
latent channels and scaling/shift factors, and the scheduler config; only widths, depths and the
vocabularies shrink. It is saved with ``save_pretrained`` so tests load it through the
``from_pretrained`` code that production uses with the hub id. Builds are seeded and cached (see
:mod:`editspecialists.demo.cache`).

The facts below are those of ``tests/fixtures/hub/black-forest-labs__FLUX.1-Kontext-dev`` (sources
in its ``SOURCES.md`` rows): the Kontext repo's own files were not found, so they are FLUX.1-dev's
published files (the components Kontext shares) checked against Black Forest Labs' reference
implementation, whose ``flux-dev-kontext`` spec has the same transformer and autoencoder
parameters as ``flux-dev``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from editspecialists.demo.cache import cached_build, default_cache_root
from editspecialists.demo.policy_standin import byte_level_clip_tokenizer, tiny_clip_text_config
from editspecialists.demo.realsize import parameter_count

KONTEXT_REPO = "black-forest-labs/FLUX.1-Kontext-dev"

# model_index.json's components (FLUX.1-dev's file; BFL's reference loads the same kinds of model).
# transformers 5 saves the T5 tokenizer as "T5Tokenizer" (``T5TokenizerFast`` is an alias of it);
# the published name is kept.
KONTEXT_COMPONENTS = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# transformer/config.json (FLUX.1-dev's file; axes_dims_rope from BFL's flux-dev-kontext axes_dim).
KONTEXT_TRANSFORMER = {
    "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
    "patch_size": 1, "pooled_projection_dim": 768,
}
# vae/config.json (FLUX.1-dev's file; BFL's flux-dev-kontext ae_params agree).
KONTEXT_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "out_channels": 3, "latent_channels": 16, "latents_mean": None,
    "latents_std": None, "layers_per_block": 2, "mid_block_add_attention": True, "norm_num_groups": 32,
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_post_quant_conv": False,
    "use_quant_conv": False,
}
# scheduler/scheduler_config.json (FLUX.1-dev's file without its _diffusers_version 0.30.0.dev0).
KONTEXT_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
    "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
    "use_dynamic_shifting": True,
}
# text_encoder/config.json: the CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14).
KONTEXT_CLIP_TEXT = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "projection_dim": 768, "vocab_size": 49408,
}
# text_encoder_2/config.json: the T5 v1.1 XXL encoder (google/t5-v1_1-xxl).
KONTEXT_T5 = {
    "architectures": ["T5EncoderModel"], "classifier_dropout": 0.0, "d_ff": 10240, "d_kv": 64, "d_model": 4096,
    "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True,
    "is_gated_act": True, "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": 24,
    "num_heads": 64, "num_layers": 24, "output_past": True, "pad_token_id": 0,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
    "use_cache": True, "vocab_size": 32128,
}
# tokenizer_2/tokenizer_config.json: <pad>=0, </s>=1, <unk>=2, then the pieces, then <extra_id_99>
# down to <extra_id_0> (ids 32000-32099); 512 tokens (also BFL's load_t5 max_length).
KONTEXT_T5_TOKENIZER = {
    "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "extra_ids": 100, "model_max_length": 512,
}

# The stand-in's sizes: everything else is the real repo's.
TINY_TRANSFORMER = {
    "num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16,
    "axes_dims_rope": [4, 6, 6],  # sums to the head dim, as 16 + 56 + 56 = 128
}
TINY_VAE = {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64}
TINY_CLIP_HIDDEN = 32
TINY_T5 = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2, "num_decoder_layers": 2}


def tiny_t5_tokenizer():
    """A ``T5TokenizerFast`` (Unigram, Metaspace) over ASCII characters with T5's special-token
    layout: ``<pad>``, ``</s>``, ``<unk>`` at ids 0-2 and the 100 extra ids last, in reverse."""
    from transformers import T5TokenizerFast

    facts = KONTEXT_T5_TOKENIZER
    pieces = [(facts["pad_token"], 0.0), (facts["eos_token"], 0.0), (facts["unk_token"], 0.0), ("\u2581", -2.0)]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [("\u2581" + char, -4.0), (char, -5.0)]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(facts["extra_ids"]))]
    return T5TokenizerFast(vocab=pieces, **facts)


def tiny_clip_config(vocab_size: int):
    """The CLIP-L text config (:data:`KONTEXT_CLIP_TEXT`) with the sizes and special-token ids of the
    tiny pipelines' CLIP (:func:`tiny_clip_text_config`, whose tokenizer puts them at 0 and 1)."""
    from transformers import CLIPTextConfig

    tiny = tiny_clip_text_config(vocab_size, TINY_CLIP_HIDDEN).to_dict()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "bos_token_id", "eos_token_id", "pad_token_id")
    sizes = {key: tiny[key] for key in keys}
    return CLIPTextConfig(**{**KONTEXT_CLIP_TEXT, **sizes, "projection_dim": TINY_CLIP_HIDDEN})


def tiny_t5_config(vocab_size: int):
    """The T5-XXL encoder config (:data:`KONTEXT_T5`) at :data:`TINY_T5` sizes."""
    from transformers import T5Config

    return T5Config(**{**KONTEXT_T5, **TINY_T5, "vocab_size": vocab_size})


def write_kontext_scheduler_config(folder: Path) -> None:
    """Replace the saved scheduler config by the real one (:data:`KONTEXT_SCHEDULER`): the fields
    seen, so every other field takes the installed diffusers' default, as for the published file."""
    import diffusers

    path = Path(folder) / "scheduler" / "scheduler_config.json"
    config = {**KONTEXT_SCHEDULER, "_diffusers_version": diffusers.__version__}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_kontext_model_index(folder: Path) -> None:
    """Give the saved ``model_index.json`` the published component entries (:data:`KONTEXT_COMPONENTS`)
    and no ``_name_or_path``."""
    path = Path(folder) / "model_index.json"
    index = {**json.loads(path.read_text()), **KONTEXT_COMPONENTS}
    index.pop("_name_or_path", None)  # a pipeline saved after loading records where it came from
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_tiny_kontext(folder: Path, seed: int = 0) -> None:
    """Save a tiny ``FluxKontextPipeline`` (1 double + 1 single block, 2 heads of 16, a 4-level VAE
    with 16 latent channels, 2-layer CLIP and T5 encoders) with the components and scheduler
    config of ``black-forest-labs/FLUX.1-Kontext-dev``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer()
    text_encoder = CLIPTextModel(tiny_clip_config(len(tokenizer.get_vocab())))
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(tiny_t5_config(len(tokenizer_2)))
    transformer = FluxTransformer2DModel(**{
        **KONTEXT_TRANSFORMER, **TINY_TRANSFORMER,
        "joint_attention_dim": text_encoder_2.config.d_model,
        "pooled_projection_dim": text_encoder.config.hidden_size,  # the pipeline pools CLIP's pooler_output
    })
    vae = AutoencoderKL(**{**KONTEXT_VAE, **TINY_VAE})
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(KONTEXT_SCHEDULER), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
    write_kontext_model_index(folder)
    write_kontext_scheduler_config(folder)


def kontext_folder(root: Path) -> Path:
    """Where the tiny FLUX.1 Kontext pipeline is kept under ``root`` (nothing is built here)."""
    return Path(root) / "flux-kontext"


def tiny_kontext(root: Path | None = None) -> Path:
    """Folder of the cached tiny FLUX.1 Kontext pipeline (built on first use)."""
    return cached_build(kontext_folder(Path(root) if root else default_cache_root()), build_tiny_kontext)


def real_size_kontext_transformer_parameters() -> int:
    """Parameter count of the real-size Kontext ``FluxTransformer2DModel`` (:data:`KONTEXT_TRANSFORMER`),
    built on the meta device (no memory, no weights)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**KONTEXT_TRANSFORMER)
    return parameter_count(model)
