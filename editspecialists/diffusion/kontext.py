"""FLUX.1 Kontext [dev] as the editor (docs/method.md §13): its visual-prompt policy and model.

The visual prompt is InstructPix2Pix's (§2) carried over: a style module (:class:`StylePromptAttention`
with 16 latent channels, attending from the style and input latents to the prompt's T5 states)
gives 16 style channels per latent pixel; packed like the latents (2×2 patches, 64 features) they
enter through the transformer's input projection ``x_embedder``, widened from 64 to 128 input
features with the new columns zero (as IP2P's conv_in is widened), so that at initialisation the
policy computes what ``FluxKontextPipeline`` computes. The noisy tokens carry their style
channels; the input image's tokens (Kontext's context tokens, position ids with first axis 1)
carry zeros. Channels rather than further context tokens: the style image as tokens would add a
third block of tokens to every attention call (the sequence a half longer, its cost quadratic),
where channels cost one wider input projection.

The policy works on unpacked latents (N, 16, h, w), as the sampler and the trajectories store
them, and packs them for the transformer; the SDE step is elementwise, so its log-probability is
the same packed or not. Kontext [dev] is guidance-distilled: one transformer call per step, its
guidance embedding given ``scales.text`` (the pipeline's ``guidance_scale``); the image and style
scales of IP2P's four branches have no role here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.pipeline import encode_images
from editspecialists.diffusion.policy import (StylePromptAttention, VisualPromptDenoiser, WithFrozenReference,
                                              make_trainable)
from editspecialists.model_ids import explain_loading

# The transformer's attention projections (double-stream blocks: image and text streams; the
# single-stream blocks have to_q/k/v): the default LoRA targets.
KONTEXT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
STYLE_HEADS = 8
MAX_SEQUENCE_LENGTH = 512  # the pipeline's T5 prompt length


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h/2·w/2, 4C) tokens of 2×2 patches, row-major, as FLUX packs them."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: (N, h/2·w/2, 4C) -> (N, C, h, w)."""
    batch, _, features = tokens.shape
    patches = tokens.view(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, features // 4, height, width)


def position_ids(height: int, width: int, first: float, device, dtype) -> torch.Tensor:
    """(h/2·w/2, 3) RoPE ids of a latent grid's tokens: (first, row, column); first is 0 for the
    noisy latents and 1 for Kontext's context image."""
    rows = torch.arange(height // 2, device=device, dtype=dtype)[:, None].expand(height // 2, width // 2)
    cols = torch.arange(width // 2, device=device, dtype=dtype)[None, :].expand(height // 2, width // 2)
    return torch.stack([torch.full_like(rows, first), rows, cols], dim=-1).reshape(-1, 3)


def token_ids(height: int, width: int, text_length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (2·h/2·w/2, 3), text_ids (text_length, 3)): the noisy latents' ids then the context
    image's (same grid), and the text tokens' zeros, as the Kontext pipeline gives them."""
    ids = torch.cat([position_ids(height, width, first, device, dtype) for first in (0, 1)])
    return ids, torch.zeros(text_length, 3, device=device, dtype=dtype)


@dataclass
class KontextInputs:
    """The step-invariant transformer inputs of N edits (see :meth:`KontextDenoiser.branch_inputs`).

    style_tokens: (N, L, 64) packed style channels of the noisy tokens.
    image_tokens: (N, L_img, 128) the input image's packed latents, zero style features appended.
    ids: (L + L_img, 3) position ids; text_ids: (L_txt, 3) zeros.
    prompt_embeds: (N, L_txt, D) T5 states; pooled_embeds: (N, P) CLIP's pooled projection.
    """

    style_tokens: torch.Tensor
    image_tokens: torch.Tensor
    ids: torch.Tensor
    text_ids: torch.Tensor
    prompt_embeds: torch.Tensor
    pooled_embeds: torch.Tensor


class KontextDenoiser(VisualPromptDenoiser):
    """The velocity prediction of a FLUX Kontext transformer (``x_embedder`` widened to take the
    style channels) and a style module."""

    backbone_name = "transformer"
    input_layer = "x_embedder"

    def branch_inputs(self, cond: EditConditioning) -> KontextInputs:
        """The step-invariant inputs of ``cond`` (style channels of the active style module)."""
        image = cond.image_latents
        _, _, height, width = image.shape
        style = self.active_style_module(cond.style_latents, image, cond.prompt_embeds)
        image_tokens = pack_latents(image.to(style.dtype))
        ids, text_ids = token_ids(height, width, cond.prompt_embeds.shape[1], image.device, image.dtype)
        return KontextInputs(pack_latents(style), torch.cat([image_tokens, torch.zeros_like(image_tokens)], dim=-1),
                             ids, text_ids, cond.prompt_embeds, cond.pooled_embeds)

    def predict(self, latents, timesteps, cond: KontextInputs, scales: GuidanceScales):
        """Velocity (N, 16, h, w) for noisy latents (N, 16, h, w) at 0-d or (N,) timesteps
        (the scheduler's, 1000·t)."""
        batch, _, height, width = latents.shape
        noisy = torch.cat([pack_latents(latents).to(cond.style_tokens.dtype), cond.style_tokens], dim=-1)
        times = timesteps.expand(batch).to(latents.dtype) / 1000
        velocity = kontext_velocity(self.active_backbone, noisy, cond.image_tokens, times, scales.text, cond)
        return unpack_latents(velocity, height, width)


def kontext_velocity(transformer, noisy_tokens: torch.Tensor, image_tokens: torch.Tensor, times: torch.Tensor,
                     guidance_scale: float, cond) -> torch.Tensor:
    """The transformer's velocity (N, L, F_out) of the noisy tokens (N, L, F) beside the context
    image's tokens (N, L_img, F), at flow times ``times`` (N,) in [0, 1], as the Kontext pipeline
    calls it; ``cond`` gives ``ids``, ``text_ids``, ``prompt_embeds`` and ``pooled_embeds``
    (:class:`KontextInputs`)."""
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((len(times),), guidance_scale, device=times.device, dtype=torch.float32)
    velocity = transformer(hidden_states=torch.cat([noisy_tokens, image_tokens], dim=1), timestep=times,
                           guidance=guidance, pooled_projections=cond.pooled_embeds,
                           encoder_hidden_states=cond.prompt_embeds, txt_ids=cond.text_ids, img_ids=cond.ids,
                           return_dict=False)[0]
    return velocity[:, :noisy_tokens.shape[1]]


class KontextPolicy(WithFrozenReference, KontextDenoiser):
    """The trainable Kontext policy with its frozen initial model (:class:`WithFrozenReference`)."""

    def __init__(self, transformer, style_module: StylePromptAttention, use_lora: bool):
        super().__init__(transformer, style_module)
        self.init_reference(use_lora)


def widen_x_embedder(transformer, extra_features: int) -> None:
    """Give ``x_embedder`` ``extra_features`` more zero-initialised inputs (in place; outputs unchanged
    at initialisation); the config records the wider input and the unchanged output channels."""
    old = transformer.x_embedder
    new = nn.Linear(old.in_features + extra_features, old.out_features, device=old.weight.device,
                    dtype=torch.float32)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_features].copy_(old.weight)
        new.bias.copy_(old.bias)
    transformer.x_embedder = new
    out_channels = transformer.config.out_channels or transformer.config.in_channels
    transformer.register_to_config(in_channels=new.in_features, out_channels=out_channels)


def kontext_style_module(transformer, latent_channels: int, seed: int = 0) -> StylePromptAttention:
    """The style module of a Kontext transformer: queries from (style, input) latents, keys and
    values from the T5 states (``joint_attention_dim``), inner width 8 heads of the transformer's
    head dimension, 16 output channels; weights drawn from a fixed seed (no pretrained layer maps
    T5 states this way; its output enters through zero columns, so the start is the base model)."""
    inner = STYLE_HEADS * transformer.config.attention_head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StylePromptAttention(latent_channels, transformer.config.joint_attention_dim, inner, STYLE_HEADS,
                                    out_channels=latent_channels)


def build_kontext_policy(transformer, latent_channels: int, *, use_lora: bool, lora_rank: int, lora_alpha: float,
                         lora_init: str, targets=KONTEXT_LORA_TARGETS,
                         frozen_dtype: torch.dtype = torch.float32) -> KontextPolicy:
    """Turn a Kontext transformer into the visual-prompt policy (in place): LoRA on ``targets`` (or
    full fine-tuning), ``x_embedder`` widened by the packed style channels, the style module."""
    packed = 4 * latent_channels
    if transformer.x_embedder.in_features != packed:
        raise ValueError(f"expected a Kontext transformer whose x_embedder takes {packed} features, got "
                         f"{transformer.x_embedder.in_features}")
    style_module = kontext_style_module(transformer, latent_channels)
    make_trainable(transformer, use_lora=use_lora, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_init=lora_init,
                   targets=list(targets), frozen_dtype=frozen_dtype)
    widen_x_embedder(transformer, packed)
    style_module.to(transformer.device)
    return KontextPolicy(transformer, style_module, use_lora)


def load_kontext_pipeline(model_id: str, *, revision: str = ""):
    """``FluxKontextPipeline`` (fp32, CPU), text encoders and VAE frozen; a failure names the role
    ``pretrained.model``, the id and what to do."""
    from diffusers import FluxKontextPipeline

    with explain_loading({"pretrained.model": model_id}, {"pretrained.model": revision}):
        pipe = FluxKontextPipeline.from_pretrained(model_id, revision=revision or None)
    for frozen in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        frozen.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def encode_kontext_images(vae, images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] -> latents (N, 16, H/8, W/8) as the Kontext pipeline encodes
    its input image: the posterior mode of 2x − 1, shifted and scaled."""
    return (encode_images(vae, images) - vae.config.shift_factor) * vae.config.scaling_factor


def encode_kontext_conditioning(pipe, inputs: torch.Tensor, styles: torch.Tensor, prompts: list[str],
                                max_sequence_length: int, device) -> EditConditioning:
    """The fp32 conditioning (as the sampler and training take it) of inputs and styles
    ``(N, 3, H, W)`` in [0, 1], one prompt each, as the Kontext pipeline encodes them: latents
    shifted and scaled (``pipe.vae``), T5 states of ``max_sequence_length`` tokens and CLIP's pooled
    projection (``pipe.encode_prompt``: a ``FluxKontextPipeline`` or a pipeline with its encoders)."""
    with torch.no_grad():
        prompt_embeds, pooled, _ = pipe.encode_prompt(prompts, device=device, max_sequence_length=max_sequence_length)
    inputs, styles = (encode_kontext_images(pipe.vae, images).float() for images in (inputs, styles))
    return EditConditioning(inputs, styles, prompt_embeds.float(), None, pooled_embeds=pooled.float())


def kontext_schedule(scheduler, num_steps: int, height: int, width: int, device=None) -> None:
    """Set the Kontext pipeline's schedule for latents of ``height`` × ``width`` (unpacked): times
    linspace(1, 1/T, T), shifted by the ``mu`` of the packed sequence length (dynamic shifting)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    mu = calculate_shift((height // 2) * (width // 2), config.get("base_image_seq_len", 256),
                         config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                         config.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu, device=device)
