"""``KontextSpecialistPipeline``: a FLUX.1 Kontext specialist as a diffusers pipeline.

What ``EditSpecialistPipeline.from_pretrained`` returns for a specialist trained with
``pretrained.family="flux_kontext"`` (an export, a checkpoint, a run folder, or a
``FluxKontextPipeline`` folder or id as the untrained base model). Its registered components are
the Kontext pipeline's (VAE, CLIP and T5 text encoders and tokenizers, the flow-matching
scheduler), the transformer with its widened ``x_embedder`` and the style module; everything else
(loading, the export, the base model, editing through the training sampler) is
:class:`~editspecialists.specialist.base.SpecialistPipelineMixin`'s, as for InstructPix2Pix.

It is a ``FluxKontextPipeline`` subclass for the prompt encoding (``encode_prompt``, CLIP's pooled
projection and T5's states) and the LoRA loader (``FluxLoraLoaderMixin``: ``load_lora_weights``,
``fuse_lora``); its ``__call__`` is the specialist's, not the base pipeline's. Kontext [dev] is
guidance-distilled: one ``guidance_scale`` (the transformer's guidance embedding), no image or style
guidance scales. Working images have sides in multiples of 16 (the VAE's 8 and the 2×2 packing).
"""

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
from diffusers import FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from editspecialists.diffusion.bundle import EditModelSpec
from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.kontext import (MAX_SEQUENCE_LENGTH, KontextDenoiser, encode_kontext_conditioning,
                                               kontext_schedule, load_kontext_pipeline)
from editspecialists.diffusion.pipeline import FLUX_KONTEXT
from editspecialists.diffusion.policy import StylePromptAttention
from editspecialists.specialist.base import EditSpecialistOutput, SpecialistPipelineMixin

# The Kontext pipeline's prompt length for CLIP (its tokenizer's model_max_length when present).
CLIP_PROMPT_TOKENS = 77


class KontextSpecialistPipeline(SpecialistPipelineMixin, FluxKontextPipeline):
    """FLUX.1 Kontext's specialist: the VAE, CLIP and T5 encoders and tokenizers, the transformer
    (``x_embedder`` widened to take the style channels), the style module and the scheduler
    (registered components), and ``info`` (pipeline config); ``policy`` as for
    :class:`~editspecialists.specialist.pipeline.EditSpecialistPipeline`."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->style_module->transformer->vae"
    _optional_components = []
    family = FLUX_KONTEXT
    denoiser_class = KontextDenoiser
    backbone_class = FluxTransformer2DModel
    generation_autocast_dtype = torch.bfloat16  # FLUX overflows in fp16

    # Component annotations are classes (no postponed evaluation in this module): diffusers reads them.
    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 text_encoder_2: T5EncoderModel, tokenizer_2: T5TokenizerFast, transformer: FluxTransformer2DModel,
                 style_module: StylePromptAttention, scheduler: FlowMatchEulerDiscreteScheduler, info=None):
        DiffusionPipeline.__init__(self)  # FluxKontextPipeline's __init__ registers its image encoder too
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, transformer=transformer, style_module=style_module,
                              scheduler=scheduler)
        self.tokenizer_max_length = getattr(tokenizer, "model_max_length", CLIP_PROMPT_TOKENS)
        self.latent_channels = vae.config.latent_channels
        self.init_specialist(info)

    @property
    def size_multiple(self) -> int:
        """Twice the VAE's factor: the latents are packed in 2×2 patches."""
        return 2 * self.vae_scale_factor

    @classmethod
    def load_base_pipeline(cls, spec: EditModelSpec):
        """The base ``FluxKontextPipeline`` of ``spec`` (its components for a merged compact export)."""
        return load_kontext_pipeline(spec.model, revision=spec.revision)

    def set_schedule(self, num_steps: int, height: int, width: int, device) -> None:
        """The Kontext pipeline's schedule for images of ``height`` × ``width`` px (shifted for the
        latents' sequence length) on ``device``."""
        kontext_schedule(self.scheduler, num_steps, height // self.vae_scale_factor, width // self.vae_scale_factor,
                         device)

    def conditioning(self, inputs: torch.Tensor, styles: torch.Tensor, prompts: list[str]):
        """The conditioning of inputs and styles ``(N, 3, H, W)`` in [0, 1], one prompt each, with the
        specialist's T5 prompt length (``max_sequence_length``)."""
        tokens = self.info.get("max_sequence_length") or MAX_SEQUENCE_LENGTH
        return encode_kontext_conditioning(self, inputs, styles, prompts, tokens, self._execution_device)

    @torch.no_grad()
    def __call__(self, image, style_image, prompt: str | None = None, *, input_name: str | None = None,
                 style_name: str | None = None, num_inference_steps: int = 28, guidance_scale: float = 2.5,
                 generator: torch.Generator | int | None = None, num_images_per_prompt: int = 1,
                 eta: float = 0.0, sde_window: str = "", max_side: int | None = None,
                 output_type: str = "pil") -> EditSpecialistOutput:
        """Edit ``image`` (PIL image or file path, any size and mode) towards ``style_image``.

        prompt: the instruction; default "turn the {input} into {style}" with ``input_name``/
        ``style_name`` (default the specialist's). guidance_scale: Kontext's distilled guidance.
        eta: the flow SDE's noise level, 0 for the deterministic ODE of ``FluxKontextPipeline``
        (the default; generate.py samples as training did, with the run's ``sample.eta`` and
        ``sample.sde_window``, which the specialist's ``info["defaults"]`` records); sde_window:
        "start:stop" to add the noise on those steps only. generator, max_side, output_type and the
        result: as :class:`~editspecialists.specialist.pipeline.EditSpecialistPipeline`'s.
        """
        return self.edit_image(image, style_image, prompt, input_name=input_name, style_name=style_name,
                               scales=GuidanceScales(text=guidance_scale), num_inference_steps=num_inference_steps,
                               generator=generator, num_images_per_prompt=num_images_per_prompt, eta=eta,
                               sde_window=sde_window, max_side=max_side, output_type=output_type)
