"""The one builder of everything a run edits with: :func:`build_edit_model`.

Training, the model check, the benchmarks, generation and the specialist pipeline all build their
models here, from an :class:`EditModelSpec` read from a run config (:meth:`EditModelSpec.from_config`)
or from a checkpoint's or export's recorded architecture (:meth:`EditModelSpec.with_architecture`).

What is specific to a backbone family (loading its pipeline, turning its denoiser into the
trainable visual-prompt policy) sits behind one seam, :data:`BACKBONES`: a family is a function
``(spec, device) -> EditModel``; the loop, sampler, feedback and checkpoints stay the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable

import torch

from editspecialists.config_keys import value_at
from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.kontext import (KONTEXT_LORA_TARGETS, MAX_SEQUENCE_LENGTH, build_kontext_policy,
                                               encode_kontext_conditioning, kontext_schedule, load_kontext_pipeline)
from editspecialists.diffusion.pipeline import (FLOW_SDE, FLUX_KONTEXT, INSTRUCT_PIX2PIX, cast_model,
                                                encode_conditioning, encode_prompts, load_pipeline, load_scheduler,
                                                place_encoders, use_xformers_attention)
from editspecialists.diffusion.policy import (LORA_INITS, LORA_TARGETS, VisualPromptPolicy, build_policy,
                                              uses_gradient_checkpointing)
from editspecialists.model_ids import explain_loading
from editspecialists.precision import mixed_precision_dtype


@dataclass(frozen=True)
class EditModelSpec:
    """What to build: the base model (hub id or folder, revision), the sampler family, the policy's
    LoRA (or full fine-tuning), activation checkpointing, the dtype of the frozen weights
    (the run's mixed precision; trainable weights are always fp32) and the guidance scales."""

    model: str
    revision: str = ""
    scheduler: str = "euler_ancestral"
    use_lora: bool = True
    lora_rank: int = 8
    lora_alpha: float = 8
    lora_init: str = "default"
    gradient_checkpointing: str = "without_lora"
    frozen_dtype: torch.dtype = torch.float32
    use_xformers: bool = False
    scales: GuidanceScales = field(default_factory=GuidanceScales)
    family: str = INSTRUCT_PIX2PIX
    lora_targets: tuple[str, ...] | None = None  # None: the family's default
    max_sequence_length: int = MAX_SEQUENCE_LENGTH  # Kontext: T5 tokens of a prompt (the pipeline's 512)

    @classmethod
    def from_config(cls, config, **overrides) -> "EditModelSpec":
        """The spec of a training config (``pretrained.*``, the LoRA keys, ``gradient_checkpointing``,
        ``mixed_precision``, ``use_xformers``, ``sample.*_guidance_scale``); ``overrides`` replace fields."""
        targets = tuple(name.strip() for name in value_at(config, "lora_targets", "").split(",") if name.strip())
        spec = cls(model=config.pretrained.model, revision=config.pretrained.revision,
                   scheduler=config.pretrained.scheduler, use_lora=config.use_lora, lora_rank=config.lora_rank,
                   lora_alpha=config.lora_alpha, lora_init=config.lora_init,
                   gradient_checkpointing=config.gradient_checkpointing,
                   frozen_dtype=mixed_precision_dtype(config.mixed_precision), use_xformers=config.use_xformers,
                   scales=GuidanceScales.from_config(config.sample),
                   family=value_at(config, "pretrained.family", INSTRUCT_PIX2PIX), lora_targets=targets or None,
                   max_sequence_length=value_at(config, "pretrained.max_sequence_length", MAX_SEQUENCE_LENGTH))
        return replace(spec, **overrides)

    def with_architecture(self, architecture: dict[str, str]) -> "EditModelSpec":
        """This spec with the LoRA settings a checkpoint or export records (strings, as
        :func:`editspecialists.formats.checkpoint.architecture_of` writes them)."""
        return replace(self, use_lora=architecture["use_lora"] == "True", lora_rank=int(architecture["lora_rank"]),
                       lora_alpha=json.loads(architecture["lora_alpha"]))

    def architecture(self) -> dict[str, str]:
        """The LoRA settings as a checkpoint or export records them (inverse of :meth:`with_architecture`)."""
        return {"use_lora": str(self.use_lora), "lora_rank": str(self.lora_rank), "lora_alpha": str(self.lora_alpha)}


@dataclass
class EditModel:
    """The trainable policy, the frozen VAE, text encoder and tokenizer, the scheduler and the
    guidance scales, placed on ``device`` (frozen parts in ``frozen_dtype``)."""

    policy: VisualPromptPolicy
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    scales: GuidanceScales
    frozen_dtype: torch.dtype
    device: torch.device

    def set_timesteps(self, num_steps: int, resolution: int) -> None:
        """Set the scheduler's ``num_steps`` sampling steps for square images of ``resolution`` px
        (InstructPix2Pix's schedule does not depend on the size) on the model's device."""
        self.scheduler.set_timesteps(num_steps, device=self.device)

    @cached_property
    def empty_embeds(self) -> torch.Tensor:
        """Text-encoder states ``(1, L, D)`` of the empty prompt, fp32 (encoded once)."""
        return encode_prompts(self.tokenizer, self.text_encoder, [""]).float()

    def conditioning(self, inputs: torch.Tensor, styles: torch.Tensor, prompts: list[str]) -> EditConditioning:
        """The fp32 conditioning (as the sampler and training take it) of inputs and styles
        ``(N, 3, H, W)`` in [0, 1], one prompt each."""
        return encode_conditioning(self.vae, self.tokenizer, self.text_encoder, inputs, styles, prompts,
                                   self.empty_embeds, torch.float32)


def build_instruct_pix2pix(spec: EditModelSpec, device: torch.device) -> EditModel:
    """InstructPix2Pix: its diffusers pipeline loaded, encoders placed, the UNet turned into the
    visual-prompt policy (widened conv_in, style module, LoRA) on ``device``."""
    if spec.lora_init not in LORA_INITS:
        raise ValueError(f"lora_init must be one of {sorted(LORA_INITS)}, got {spec.lora_init!r}")
    checkpointing = uses_gradient_checkpointing(spec.gradient_checkpointing, spec.use_lora)
    pipe = load_pipeline(spec.model, revision=spec.revision, scheduler=spec.scheduler)
    place_encoders(pipe, device, spec.frozen_dtype)
    if spec.use_xformers:
        use_xformers_attention(pipe.unet, pipe.vae)
    pipe.unet.to(device)
    policy = build_policy(pipe.unet, use_lora=spec.use_lora, lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha,
                          lora_init=spec.lora_init, frozen_dtype=spec.frozen_dtype,
                          targets=spec.lora_targets or LORA_TARGETS)
    if checkpointing:
        policy.unet.enable_gradient_checkpointing()
    return EditModel(policy, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, spec.scales,
                     spec.frozen_dtype, torch.device(device))


@dataclass
class KontextEditModel(EditModel):
    """FLUX.1 Kontext's edit model: ``text_encoder``/``tokenizer`` are CLIP's, ``pipe`` the loaded
    ``FluxKontextPipeline`` (its T5 encoder and its own prompt encoding, ``max_sequence_length``
    T5 tokens)."""

    pipe: object = None
    max_sequence_length: int = MAX_SEQUENCE_LENGTH

    @property
    def empty_embeds(self) -> None:
        """None: Kontext [dev] has no classifier-free branches."""
        return None

    def set_timesteps(self, num_steps: int, resolution: int) -> None:
        """The Kontext pipeline's schedule (shifted for the latents' sequence length) at ``resolution``."""
        latent_side = resolution // self.pipe.vae_scale_factor
        kontext_schedule(self.scheduler, num_steps, latent_side, latent_side, self.device)

    def conditioning(self, inputs: torch.Tensor, styles: torch.Tensor, prompts: list[str]) -> EditConditioning:
        """The fp32 conditioning of inputs and styles ``(N, 3, H, W)`` in [0, 1] as the Kontext
        pipeline encodes them (latents shifted and scaled; T5 states and CLIP's pooled projection)."""
        return encode_kontext_conditioning(self.pipe, inputs, styles, prompts, self.max_sequence_length, self.device)


def build_flux_kontext(spec: EditModelSpec, device: torch.device) -> KontextEditModel:
    """FLUX.1 Kontext: its diffusers pipeline loaded, encoders placed, the transformer turned into
    the visual-prompt policy (widened x_embedder, style module, LoRA) on ``device``; its scheduler
    the pipeline's flow-matching one (``spec.scheduler`` must be "flow_sde")."""
    if spec.scheduler != FLOW_SDE:
        raise ValueError(f"pretrained.scheduler={spec.scheduler!r}: a FLUX Kontext model samples with the flow "
                         f"SDE ({FLOW_SDE!r})")
    checkpointing = uses_gradient_checkpointing(spec.gradient_checkpointing, spec.use_lora)
    pipe = load_kontext_pipeline(spec.model, revision=spec.revision)
    for encoder in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        cast_model(encoder, device, spec.frozen_dtype)
    pipe.transformer.to(device)
    policy = build_kontext_policy(pipe.transformer, pipe.vae.config.latent_channels, use_lora=spec.use_lora,
                                  lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_init=spec.lora_init,
                                  targets=spec.lora_targets or KONTEXT_LORA_TARGETS, frozen_dtype=spec.frozen_dtype)
    if checkpointing:
        policy.transformer.enable_gradient_checkpointing()
    return KontextEditModel(policy, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, spec.scales,
                            spec.frozen_dtype, torch.device(device), pipe=pipe,
                            max_sequence_length=spec.max_sequence_length)


# Backbone family -> its builder. The only seam a second family plugs into.
BACKBONES: dict[str, Callable[[EditModelSpec, torch.device], EditModel]] = {
    INSTRUCT_PIX2PIX: build_instruct_pix2pix, FLUX_KONTEXT: build_flux_kontext}


def load_schedule(spec: EditModelSpec, num_steps: int, resolution: int):
    """The sampler of ``spec``'s model with ``num_steps`` steps set for square images of
    ``resolution`` px, from its scheduler config alone (and, for Kontext, its VAE config: the
    schedule depends on the latents' size); what :meth:`EditModel.set_timesteps` sets on a built model."""
    if spec.family != FLUX_KONTEXT:
        scheduler = load_scheduler(spec.model, revision=spec.revision, scheduler=spec.scheduler)
        scheduler.set_timesteps(num_steps)
        return scheduler
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    with explain_loading({"pretrained.model": spec.model}, {"pretrained.model": spec.revision}):
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(spec.model, subfolder="scheduler",
                                                                    revision=spec.revision or None)
        vae = AutoencoderKL.load_config(spec.model, subfolder="vae", revision=spec.revision or None)
    latent_side = resolution // 2 ** (len(vae["block_out_channels"]) - 1)
    kontext_schedule(scheduler, num_steps, latent_side, latent_side)
    return scheduler


# The diffusers pipeline class (model_index.json's ``_class_name``) of each family's base editor.
PIPELINE_CLASSES = {INSTRUCT_PIX2PIX: "StableDiffusionInstructPix2PixPipeline", FLUX_KONTEXT: "FluxKontextPipeline"}
DEFAULT_SCHEDULERS = {INSTRUCT_PIX2PIX: "euler_ancestral", FLUX_KONTEXT: FLOW_SDE}


def base_family(model_id: str, revision: str = "") -> str:
    """The family of a base editor (hub id or diffusers folder) from its ``model_index.json``: Kontext
    for a ``FluxKontextPipeline``, else InstructPix2Pix (whose loader names any other class)."""
    from diffusers import DiffusionPipeline

    with explain_loading({"pretrained.model": model_id}, {"pretrained.model": revision}):
        class_name = DiffusionPipeline.load_config(model_id, revision=revision or None).get("_class_name")
    return FLUX_KONTEXT if class_name == PIPELINE_CLASSES[FLUX_KONTEXT] else INSTRUCT_PIX2PIX


def default_scheduler(family: str) -> str:
    """The sampler a base editor of ``family`` edits with when none is named."""
    return DEFAULT_SCHEDULERS[family]


def build_edit_model(spec: EditModelSpec, device: torch.device | str = "cpu") -> EditModel:
    """Everything a run edits with, built as ``spec`` says, on ``device``."""
    if spec.family not in BACKBONES:
        raise ValueError(f"unknown backbone family {spec.family!r}: choose one of {sorted(BACKBONES)}")
    return BACKBONES[spec.family](spec, torch.device(device))
