"""``EditSpecialistPipeline``: a diffusers pipeline that edits one image with a specialist.

    from editspecialists import EditSpecialistPipeline
    pipe = EditSpecialistPipeline.from_pretrained("exported/car_lego")
    edit = pipe(Image.open("car.jpg"), Image.open("lego.jpg"), generator=0).images[0]

``EditSpecialistPipeline.from_pretrained`` loads a specialist of any editor family as that family's
pipeline: this class for InstructPix2Pix, :class:`~editspecialists.specialist.kontext_pipeline.KontextSpecialistPipeline`
for FLUX.1 Kontext (the family an export, a checkpoint's run config or a base model's
``model_index.json`` records). What they share (loading, editing, the base model, the export) is
:class:`~editspecialists.specialist.base.SpecialistPipelineMixin`.

InstructPix2Pix's: a ``DiffusionPipeline`` whose registered components are the VAE, text encoder
and tokenizer, the 12-channel UNet, the style module (:class:`StylePromptAttention`) and the
scheduler, and whose config ``info`` says what the model is (family, base model, edit names,
training resolution and defaults, provenance). So ``save_pretrained``/``from_pretrained``,
``to(device, dtype)``, ``enable_model_cpu_offload``, ``set_progress_bar_config`` and the LoRA
loader (``load_lora_weights``, ``fuse_lora``) work as in any diffusers pipeline; ``save_pretrained``
writes an export (layout and the diffusers calls that read it in :mod:`editspecialists.formats.export`),
which diffusers loads alone once this module is imported (it names the classes to diffusers)::

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.load_lora_weights(folder)  # an adapter export's LoRA, in diffusers' format

Built from a checkpoint or a base model (through the trainer's ``build_edit_model``, the
checkpoint's weights loaded through the checkpoint checks) it also holds ``policy``, the
:class:`~editspecialists.diffusion.policy.VisualPromptPolicy` whose UNet and style module are the
registered ones: it samples as training does and runs its frozen reference (:meth:`base_model`).
Loaded from an export it samples with the registered UNet (its LoRA loaded by diffusers) and style
module through the same guidance (:class:`~editspecialists.diffusion.policy.Denoiser`); a compact
adapter export is rebuilt with its policy. Both sample with the training sampler (:func:`sample_edits`), and
generate.py edits its batches with :meth:`edit_tensors` too, so both give the same pixels for the
same seed, prompt and image at batch size 1. Image sizes: :mod:`editspecialists.specialist.base`.
"""

from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from transformers import CLIPTextModel, CLIPTokenizer

from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.pipeline import (FLUX_KONTEXT, INSTRUCT_PIX2PIX, encode_conditioning, load_pipeline,
                                                load_scheduler)
from editspecialists.diffusion.policy import Denoiser, StylePromptAttention
from editspecialists.diffusion.bundle import EditModelSpec
from editspecialists.formats import checkpoint as ckpt
from editspecialists.formats import export
from editspecialists.specialist.base import EditSpecialistOutput, SpecialistPipelineMixin, load_module_weights
from editspecialists.specialist.kontext_pipeline import KontextSpecialistPipeline


class EditSpecialistPipeline(SpecialistPipelineMixin, DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """InstructPix2Pix's specialist: the VAE, text encoder and tokenizer, the 12-channel UNet, the
    style module and the scheduler (registered components), and ``info`` (pipeline config): what
    the model is (the export's metadata). ``policy``: the trainer's policy when built from a
    checkpoint or base model (None when loaded from an export). Its ``from_pretrained`` loads a
    specialist of any family (:data:`SPECIALIST_PIPELINES`)."""

    model_cpu_offload_seq = "text_encoder->style_module->unet->vae"
    family = INSTRUCT_PIX2PIX
    denoiser_class = Denoiser
    backbone_class = UNet2DConditionModel

    # Component annotations are classes (no postponed evaluation in this module): diffusers reads them.
    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, style_module: StylePromptAttention, scheduler: SchedulerMixin,
                 info=None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              style_module=style_module, scheduler=scheduler)
        self.init_specialist(info)

    @classmethod
    def pipeline_for(cls, family: str) -> type:
        """The pipeline class of a specialist of ``family`` (:data:`SPECIALIST_PIPELINES`)."""
        if family not in SPECIALIST_PIPELINES:
            raise ValueError(f"unknown editor family {family!r}: choose one of {sorted(SPECIALIST_PIPELINES)}")
        return SPECIALIST_PIPELINES[family]

    @classmethod
    def load_base_pipeline(cls, spec: EditModelSpec):
        """The base InstructPix2Pix pipeline of ``spec`` (its components for a merged compact export)."""
        return load_pipeline(spec.model, revision=spec.revision, scheduler=spec.scheduler)

    @classmethod
    def from_export(cls, folder: Path):
        """An exported folder (:meth:`SpecialistPipelineMixin.from_export`), or one of the first format."""
        metadata = export.read_metadata(folder)
        if metadata["format"] == export.FIRST_FORMAT:
            export.verify_export(folder)
            return cls.from_first_format_export(folder, metadata)
        return super().from_export(folder)

    @classmethod
    def from_first_format_export(cls, folder: Path, info: dict) -> "EditSpecialistPipeline":
        """An export of the first format: the policy with the weights of its ``specialist/``
        checkpoint ("adapter"), or its merged 12-channel UNet and ``style_module.safetensors``; the
        base components copied, or loaded from the base model id ("components": "reference")."""
        copied = info["components"] == "copy"
        model, revision = (str(folder), "") if copied else (info["base"]["model"], info["base"]["revision"])
        if info["unet"] == "adapter":
            spec = EditModelSpec(model, revision, info["scheduler"]).with_architecture(info["architecture"])
            specialist = cls.from_spec(spec, info)
            ckpt.load_weights(specialist.policy, folder / export.FIRST_FORMAT_SPECIALIST, info["architecture"])
        else:
            base = load_pipeline(model, revision=revision, scheduler=info["scheduler"])
            unet = base.unet if copied else UNet2DConditionModel.from_pretrained(folder / "unet")
            specialist = cls(base.vae, base.text_encoder, base.tokenizer, unet, first_format_style_module(folder, unet),
                             base.scheduler, info=info)
        if not copied:
            specialist.scheduler = load_scheduler(str(folder), scheduler=info["scheduler"])
        return specialist

    def set_schedule(self, num_steps: int, height: int, width: int, device) -> None:
        """The scheduler's ``num_steps`` steps on ``device`` (InstructPix2Pix's do not depend on the size)."""
        self.scheduler.set_timesteps(num_steps, device=device)

    def conditioning(self, inputs: torch.Tensor, styles: torch.Tensor, prompts: list[str]):
        """The conditioning of inputs and styles ``(N, 3, H, W)`` in [0, 1], one prompt each."""
        return encode_conditioning(self.vae, self.tokenizer, self.text_encoder, inputs, styles, prompts)

    @torch.no_grad()
    def __call__(self, image, style_image, prompt: str | None = None, *, input_name: str | None = None,
                 style_name: str | None = None, num_inference_steps: int = 100, guidance_scale: float = 7.5,
                 image_guidance_scale: float = 1.5, style_image_guidance_scale: float = 3.0,
                 generator: torch.Generator | int | None = None, num_images_per_prompt: int = 1,
                 eta: float = 1.0, sde_window: str = "", max_side: int | None = None,
                 output_type: str = "pil") -> EditSpecialistOutput:
        """Edit ``image`` (PIL image or file path, any size and mode) towards ``style_image``.

        prompt: the instruction; default the method's first template, "turn the {input} into
        {style}", with ``input_name``/``style_name`` (default the specialist's). generator: a
        ``torch.Generator`` or an int seed (generate.py's per-image seed reproduces its edit).
        eta: the sampler's noise scale; sde_window: "start:stop" to add it on those steps only (a
        DDIM run trained with ``sample.sde_window``). max_side: longest side of the working image
        (default :attr:`max_side`). Returns ``num_images_per_prompt`` edits of the input's size
        (:class:`EditSpecialistOutput`); like training's ``nb_gen`` edits they share their initial
        noise and differ by the sampler's per-step noise (none with DDIM at ``eta=0``: then they are
        equal).
        """
        scales = GuidanceScales(guidance_scale, image_guidance_scale, style_image_guidance_scale)
        return self.edit_image(image, style_image, prompt, input_name=input_name, style_name=style_name, scales=scales,
                               num_inference_steps=num_inference_steps, generator=generator,
                               num_images_per_prompt=num_images_per_prompt, eta=eta, sde_window=sde_window,
                               max_side=max_side, output_type=output_type)


# The specialist pipeline of each editor family: what EditSpecialistPipeline.from_pretrained loads.
SPECIALIST_PIPELINES = {INSTRUCT_PIX2PIX: EditSpecialistPipeline, FLUX_KONTEXT: KontextSpecialistPipeline}

# DiffusionPipeline.from_pretrained looks the class a model_index.json names up in the diffusers
# namespace: naming the pipelines there lets it load an export (and imports the style module's
# module, which diffusers requires of a component defined outside it).
for _pipeline in SPECIALIST_PIPELINES.values():
    setattr(diffusers, _pipeline.__name__, _pipeline)


def export_checkpoint(load_checkpoint: str, out: str | Path, **options) -> Path:
    """scripts/export.py: the specialist of ``load_checkpoint`` (checkpoint, weights file or run
    folder) written to ``out`` by the pipeline's ``save_pretrained`` with ``options``."""
    if not load_checkpoint:
        raise ValueError("--config.load_checkpoint is empty: give the run or checkpoint to export")
    export.check_output_folder(Path(out), options.get("overwrite", False))
    return EditSpecialistPipeline.from_checkpoint(load_checkpoint).save_pretrained(out, **options)


def first_format_style_module(folder: Path, unet) -> StylePromptAttention:
    """The style module of a first-format merged export (``style_module.safetensors``), for its
    UNet (checked to take 12 channels)."""
    expected = export.SPECIALIST_UNET_CHANNELS
    if unet.config.in_channels != expected:
        raise export.ExportError(f"{folder / 'unet' / 'config.json'}: a UNet with {unet.config.in_channels} input "
                                 f"channels, not the specialist's {expected}: another architecture")
    style_module = StylePromptAttention.from_unet(unet)
    load_module_weights(style_module, folder / export.FIRST_FORMAT_STYLE_MODULE, what="this UNet's style module")
    return style_module.to(unet.device)
