"""Loading the base InstructPix2Pix pipeline and the frozen encoders around the policy.

This is the one model-loading path of the policy: a hub id or a local folder, used by training,
generation, the benchmark and the tests alike.
"""

from __future__ import annotations

import torch

from editspecialists.diffusion.guidance import EditConditioning
from editspecialists.model_ids import explain_loading


def load_pipeline(model_id: str, *, revision: str = "", scheduler: str = "euler_ancestral"):
    """Load ``StableDiffusionInstructPix2PixPipeline`` (fp32, CPU) with the chosen scheduler.

    The VAE and text encoder are frozen; the UNet is returned untouched for
    :func:`editspecialists.diffusion.policy.build_policy`. A failure raises
    :class:`~editspecialists.model_ids.ModelIdError` naming the role ``pretrained.model``, the id
    and what to do.
    """
    from diffusers import StableDiffusionInstructPix2PixPipeline

    with explain_loading({"pretrained.model": model_id}, {"pretrained.model": revision}):
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            model_id,
            revision=revision or None,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.scheduler = _scheduler_class(scheduler).from_config(pipe.scheduler.config)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def use_xformers_attention(*models) -> None:
    """xformers' memory-efficient attention in these diffusers models (``use_xformers``)."""
    for model in models:
        model.enable_xformers_memory_efficient_attention()


def cast_model(model: torch.nn.Module, device=None, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Move a frozen model to ``device`` and/or ``dtype`` (in place; returned for chaining).

    Calls ``torch.nn.Module.to`` directly: diffusers' ``ModelMixin.to`` warns on every dtype cast
    about modules to keep in fp32, even for the VAE and UNet, which keep none.
    """
    return torch.nn.Module.to(model, device=device, dtype=dtype)


def place_encoders(pipe, device, dtype: torch.dtype = torch.float32) -> None:
    """The frozen VAE and text encoder of ``pipe`` on ``device`` in ``dtype``."""
    cast_model(pipe.vae, device, dtype)
    cast_model(pipe.text_encoder, device, dtype)


# The values of pretrained.scheduler: the sampler families with a log-probability (logprob.py).
SCHEDULERS = ("euler_ancestral", "ddim")  # InstructPix2Pix's
FLOW_SDE = "flow_sde"  # a flow-matching editor's (FLUX Kontext)
FLOW_SCHEDULERS = (FLOW_SDE,)
# The values of pretrained.family: the editors diffusion/bundle.py builds.
INSTRUCT_PIX2PIX = "instruct_pix2pix"
FLUX_KONTEXT = "flux_kontext"
FAMILIES = (INSTRUCT_PIX2PIX, FLUX_KONTEXT)
FAMILY_NAMES = {INSTRUCT_PIX2PIX: "InstructPix2Pix", FLUX_KONTEXT: "FLUX.1 Kontext"}  # as the README and app say


def _scheduler_class(name: str):
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    if name not in SCHEDULERS:
        raise ValueError(f"pretrained.scheduler={name!r}: choose one of {list(SCHEDULERS)}")
    return {"euler_ancestral": EulerAncestralDiscreteScheduler, "ddim": DDIMScheduler}[name]


def load_scheduler(model_id: str, *, revision: str = "", scheduler: str = "euler_ancestral"):
    """Only the pipeline's scheduler (a small JSON), as the chosen family."""
    with explain_loading({"pretrained.model": model_id}, {"pretrained.model": revision}):
        return _scheduler_class(scheduler).from_pretrained(model_id, subfolder="scheduler",
                                                           revision=revision or None)


def execution_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` computes: its device, or under a pipeline's ``enable_model_cpu_offload`` the
    accelerator its offload hook moves it to when called (a VAE's ``encode``/``decode`` are
    called, not its forward, so their inputs are not moved for them)."""
    hook_device = getattr(getattr(model, "_hf_hook", None), "execution_device", None)
    return torch.device(hook_device if hook_device is not None else model.device)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] -> unscaled latent modes (N, 4, H/f, W/f), IP2P convention."""
    pixels = (2 * images - 1).to(device=execution_device(vae), dtype=vae.dtype)
    return vae.encode(pixels).latent_dist.mode()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (N, C, h, w) -> images (N, 3, h·f, w·f) in [0, 1], fp32 (a VAE with a
    ``shift_factor``, FLUX's, has it added back after unscaling)."""
    latents = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        latents = latents + vae.config.shift_factor
    latents = latents.to(device=execution_device(vae), dtype=vae.dtype)
    images = vae.decode(latents).sample
    return ((images.float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Prompts -> text-encoder hidden states (N, L, D), padded to the tokenizer's max length."""
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


def encode_conditioning(vae, tokenizer, text_encoder, inputs: torch.Tensor, styles: torch.Tensor,
                        prompts: list[str], empty_embeds: torch.Tensor | None = None,
                        dtype: torch.dtype | None = None) -> EditConditioning:
    """The conditioning of inputs and styles ``(N, 3, H, W)`` in [0, 1], one prompt each: their
    latents and the prompts' text states, with ``empty_embeds`` ``(1, L, D)`` (encoded here when
    None), in ``dtype`` (None: the encoders' own)."""
    if empty_embeds is None:
        empty_embeds = encode_prompts(tokenizer, text_encoder, [""])
    parts = (encode_images(vae, inputs), encode_images(vae, styles), encode_prompts(tokenizer, text_encoder, prompts),
             empty_embeds)
    return EditConditioning(*(part if dtype is None else part.to(dtype) for part in parts))
