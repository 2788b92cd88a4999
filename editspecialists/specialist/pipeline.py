"""``EditSpecialistPipeline``: a diffusers pipeline that edits one image with a specialist.

    from editspecialists import EditSpecialistPipeline
    pipe = EditSpecialistPipeline.from_pretrained("exported/car_lego")
    edit = pipe(Image.open("car.jpg"), Image.open("lego.jpg"), generator=0).images[0]

A ``DiffusionPipeline`` whose registered components are the VAE, text encoder and tokenizer, the
12-channel UNet, the style module (:class:`StylePromptAttention`) and the scheduler, and whose config
``info`` says what the model is (base model, edit names, training resolution and defaults,
provenance). So ``save_pretrained``/``from_pretrained``, ``to(device, dtype)``,
``enable_model_cpu_offload``, ``set_progress_bar_config`` and the LoRA loader (``load_lora_weights``,
``fuse_lora``) work as in any diffusers pipeline; ``save_pretrained`` writes an export (layout and
the diffusers calls that read it in :mod:`editspecialists.formats.export`), which diffusers loads
alone once this module is imported (it names the class to diffusers)::

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.load_lora_weights(folder)  # an adapter export's LoRA, in diffusers' format

The pipeline's extra state is its config entry ``info`` (model_index.json), so that the pipeline
diffusers loads edits as this one: same names, resolution and resize filter.

Built from a checkpoint or a base model (through the trainer's ``build_edit_model``, the
checkpoint's weights loaded through the checkpoint checks) it also holds ``policy``, the
:class:`~editspecialists.diffusion.policy.VisualPromptPolicy` whose UNet and style module are the
registered ones: it samples as training does and runs its frozen reference (:meth:`base_model`).
Loaded from an export it samples with the registered UNet (its LoRA loaded by diffusers) and style
module through the same guidance (:class:`~editspecialists.diffusion.policy.Denoiser`); a compact
adapter export is rebuilt with its policy. Both sample with the training sampler (:func:`sample_edits`), and
generate.py edits its batches with :meth:`edit_tensors` too, so both give the same pixels for the
same seed, prompt and image at batch size 1.

Image size: training and generate.py resize the short side to ``data_resize`` and crop the
central square. The pipeline never crops: its ``image_processor`` (diffusers' ``VaeImageProcessor``
with the specialist's resize filter) resizes the input (any size, any mode; RGBA is composited on
white) so that both sides are multiples of the VAE's downsampling factor ``vae_scale_factor`` and
the longer is at most ``max_side`` (default: the specialist's training resolution ``data_resize``;
it never enlarges); the edit is resized back to the input's size (bicubic, antialiased: the image
processor's tensor resize is nearest-neighbour). A square input of ``data_resize`` pixels is
therefore edited exactly as generate.py edits it. The style image is resized to cover the working
size and centre-cropped to it in the training data's arithmetic (for a square, generate.py's own
resize and crop; the image processor's "crop" mode rounds otherwise).
"""

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata as package_metadata
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils import BaseOutput
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from PIL import Image, ImageOps
from transformers import CLIPTextModel, CLIPTokenizer

from editspecialists import writing
from editspecialists.command_line import command_with
from editspecialists.config_keys import value_at
from editspecialists.data.dataset import PROMPT_TEMPLATES
from editspecialists.data.images import DEFAULT_RESIZE_FILTER, read_rgb, resize_cover, to_rgb
from editspecialists.diffusion.bundle import EditModelSpec, build_edit_model
from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.pipeline import cast_model, encode_conditioning, load_pipeline, load_scheduler
from editspecialists.diffusion.policy import Denoiser, StylePromptAttention
from editspecialists.diffusion.sampler import sample_edits
from editspecialists.formats import checkpoint as ckpt
from editspecialists.formats import export
from editspecialists.specialist.model_card import model_card

logger = logging.getLogger(__name__)

# Longer side of the working image when the model records no training resolution (a base model).
BASE_MAX_SIDE = 512
# Run-config keys summarised in the export's metadata and model card.
TRAINING_SUMMARY_KEYS = ("seed", "num_epochs", "data_resize", "use_lora", "lora_rank", "lora_alpha",
                         "train.learning_rate", "train.eps", "train.beta", "sample.nb_gen", "sample.num_steps",
                         "reward.weights", "inputimg_dir", "styleimg_dir")


@dataclass
class EditSpecialistOutput(BaseOutput):
    """``images``: the edits, PIL RGB images (``output_type="pil"``) or a (G, 3, H, W) float tensor
    in [0, 1] (``"pt"``), at the input's size; ``prompt``: the instruction used."""

    images: list[Image.Image] | torch.Tensor
    prompt: str


class EditSpecialistPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """The VAE, text encoder and tokenizer, the 12-channel UNet, the style module and the scheduler
    (registered components), and ``info`` (pipeline config): what the model is (base model, names,
    training resolution and defaults, provenance; the export's metadata). ``policy``: the trainer's
    policy when built from a checkpoint or base model (None when loaded from an export)."""

    model_cpu_offload_seq = "text_encoder->style_module->unet->vae"

    # Component annotations are classes (no postponed evaluation in this module): diffusers reads them.
    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, style_module: StylePromptAttention, scheduler: SchedulerMixin,
                 info=None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              style_module=style_module, scheduler=scheduler)
        self.register_to_config(info=info or {})
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, resample=self.resize_filter,
                                                 do_normalize=False)  # [0, 1] in and out, as edit_tensors
        self.policy = None

    @property
    def info(self) -> dict:
        """What the model is (the export's metadata without its format): base model, names,
        training resolution and defaults, provenance; a pipeline config entry (model_index.json)."""
        return self.config.info

    # ---- loading ----

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32,
                        device: str | torch.device | None = None) -> "EditSpecialistPipeline":
        """Load an exported folder, a checkpoint folder (or its weights file), a run folder (its
        newest checkpoint that verifies) or a base InstructPix2Pix (hub id or diffusers folder:
        the untrained visual-prompt model, with a warning). Errors name the file at fault; a folder
        with marks of an export but no complete export is refused, never loaded as the base.

        device: default CUDA when available; torch_dtype: of every model (fp32 edits exactly as
        generate.py does).
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        local = Path(str(path)).expanduser()
        export.refuse_incomplete_export(local)
        if export.is_export(local):
            specialist = cls.from_export(local)
        elif local.is_file() or (local / ckpt.WEIGHTS).is_file() or (local / ckpt.CHECKPOINTS).is_dir():
            specialist = cls.from_checkpoint(local)
        elif local.exists() and not (local / "model_index.json").is_file():
            raise FileNotFoundError(
                f"{local} is neither an exported specialist (no {export.METADATA}), a checkpoint (no "
                f"{ckpt.WEIGHTS}), a run folder (no {ckpt.CHECKPOINTS}/) nor a diffusers pipeline "
                f"(no model_index.json)")
        else:
            specialist = cls.from_base(str(path))
        specialist.to(device)
        if torch_dtype != torch.float32:  # built and loaded in fp32; cast quietly (diffusers' model `to` warns)
            for module in (*specialist.components.values(), specialist.policy):
                if isinstance(module, torch.nn.Module):
                    cast_model(module, dtype=torch_dtype)
        return specialist

    @classmethod
    def from_spec(cls, spec: EditModelSpec, info: dict) -> "EditSpecialistPipeline":
        """The untrained policy of ``spec``, built by :func:`build_edit_model` on the CPU in fp32 (as
        every specialist is before its weights load; :meth:`to` places it), with ``info``."""
        model = build_edit_model(replace(spec, frozen_dtype=torch.float32, use_xformers=False))
        pipe = cls(model.vae, model.text_encoder, model.tokenizer, model.policy.unet, model.policy.style_module,
                   model.scheduler, info=info)
        pipe.policy = model.policy.eval()
        return pipe

    @classmethod
    def from_checkpoint(cls, path: str | Path, scheduler: str | None = None) -> "EditSpecialistPipeline":
        """A checkpoint folder, its weights file or a run folder, rebuilt from the run's config.json
        (``scheduler``: the sampler family; default the run's)."""
        checkpoint = ckpt.resolve_checkpoint(path)
        trained = ckpt.saved_run_config(checkpoint)
        scheduler = scheduler or trained.pretrained.scheduler
        specialist = cls.from_spec(EditModelSpec.from_config(trained, scheduler=scheduler),
                                   checkpoint_info(checkpoint, trained, scheduler))
        ckpt.load_weights(specialist.policy, checkpoint, ckpt.architecture_of(trained))
        logger.info("loaded %s", checkpoint)
        return specialist

    @classmethod
    def from_base(cls, model_id: str, revision: str = "main", scheduler: str = "euler_ancestral", *,
                  warn: bool = True) -> "EditSpecialistPipeline":
        """The base InstructPix2Pix with the visual-prompt modules at their initial, identity state;
        ``warn``: log a warning that its edits are the untrained base model's."""
        return cls.untrained(EditModelSpec(model_id, revision, scheduler), warn=warn)

    @classmethod
    def untrained(cls, spec: EditModelSpec, *, warn: bool = True) -> "EditSpecialistPipeline":
        """:meth:`from_base` with the policy ``spec`` describes (a run config's, say)."""
        if warn:
            logger.warning("%s is the base InstructPix2Pix model, untrained: its edits are the base model's "
                           "(visual-prompt modules at their initial, identity state; no specialist loaded)",
                           spec.model)
        info = {"base": {"model": spec.model, "revision": spec.revision}, "scheduler": spec.scheduler,
                "trained": False, "input_name": None, "style_name": None, "resolution": None,
                "resize_filter": DEFAULT_RESIZE_FILTER, "architecture": spec.architecture(),
                "source": None, "training": None, "defaults": {}}
        return cls.from_spec(spec, info)

    @classmethod
    def from_export(cls, folder: Path) -> "EditSpecialistPipeline":
        """An exported folder (:mod:`editspecialists.formats.export`), its files verified first:
        diffusers' ``from_pretrained``, then for an adapter export the LoRA onto the UNet
        (``load_lora_adapter``: ``pipe.load_lora_weights`` would also look for text-encoder LoRA)."""
        metadata = export.read_metadata(folder)
        export.verify_export(folder)
        if metadata["format"] == export.FIRST_FORMAT:
            return cls.from_first_format_export(folder, metadata)
        if metadata.get("components") == "reference":
            return cls.from_compact_export(folder, {key: value for key, value in metadata.items() if key != "format"})
        specialist = super().from_pretrained(str(folder))
        if metadata["unet"] == "adapter":
            specialist.unet.load_lora_adapter(str(folder), weight_name=export.LORA_WEIGHTS, prefix="unet")
        return specialist

    @classmethod
    def from_compact_export(cls, folder: Path, info: dict) -> "EditSpecialistPipeline":
        """A compact export ("components": "reference"): the base model built from its id and
        revision by :func:`build_edit_model`, with the export's trained parts. An adapter export
        gives a pipeline with its ``policy`` (so :meth:`base_model` works); a merged one the
        export's UNet."""
        spec = EditModelSpec(info["base"]["model"], info["base"]["revision"], info["scheduler"])
        if info["unet"] == "adapter":
            specialist = cls.from_spec(spec.with_architecture(info["architecture"]), info)
            load_compact_adapter(folder, specialist.unet)
        else:
            base = load_pipeline(spec.model, revision=spec.revision, scheduler=spec.scheduler)
            specialist = cls(base.vae, base.text_encoder, base.tokenizer,
                             UNet2DConditionModel.from_pretrained(folder / "unet"), StylePromptAttention.from_unet(
                                 base.unet), base.scheduler, info=info)
        load_module_weights(specialist.style_module, folder / export.STYLE_MODULE / STYLE_MODULE_WEIGHTS)
        specialist.scheduler = load_scheduler(str(folder), scheduler=info["scheduler"])
        return specialist

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

    def to(self, *args, **kwargs) -> "EditSpecialistPipeline":
        """diffusers' ``to``: every component to a device and/or dtype; the policy's frozen
        reference follows the UNet."""
        super().to(*args, **kwargs)
        if self.policy is not None:
            cast_model(self.policy, self.unet.device, self.unet.dtype)
        return self

    # ---- editing ----

    @torch.no_grad()
    def __call__(self, image, style_image, prompt: str | None = None, *, input_name: str | None = None,
                 style_name: str | None = None, num_inference_steps: int = 100, guidance_scale: float = 7.5,
                 image_guidance_scale: float = 1.5, style_image_guidance_scale: float = 3.0,
                 generator: torch.Generator | int | None = None, num_images_per_prompt: int = 1,
                 eta: float = 1.0, max_side: int | None = None, output_type: str = "pil") -> EditSpecialistOutput:
        """Edit ``image`` (PIL image or file path, any size and mode) towards ``style_image``.

        prompt: the instruction; default the method's first template, "turn the {input} into
        {style}", with ``input_name``/``style_name`` (default the specialist's). generator: a
        ``torch.Generator`` or an int seed (generate.py's per-image seed reproduces its edit).
        max_side: longest side of the working image (default :attr:`max_side`). Returns
        ``num_images_per_prompt`` edits of the input's size (:class:`EditSpecialistOutput`); like
        training's ``nb_gen`` edits they share their initial noise and differ by the sampler's
        per-step noise (none with DDIM at ``eta=0``: then they are equal).
        """
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        prompt = prompt or self.default_prompt(input_name, style_name)
        source, style = upright_rgb(image), upright_rgb(style_image)
        size = working_size(*source.size, max_side or self.max_side, self.vae_scale_factor)
        inputs = self.preprocess(source, size)
        styles = self.preprocess(resize_cover(style, size, self.resize_filter), size)
        scales = GuidanceScales(guidance_scale, image_guidance_scale, style_image_guidance_scale)
        edits = self.edit_tensors(inputs, styles, [prompt], [self.generator(generator)],
                                  num_inference_steps=num_inference_steps, scales=scales, eta=eta,
                                  nb_gen=num_images_per_prompt)[0]
        edits = resize_tensors(edits, source.size)
        return EditSpecialistOutput(self.image_processor.postprocess(edits, output_type=output_type), prompt)

    def preprocess(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1] of an RGB image resized to ``size`` = (W, H) by the image processor,
        in the contiguous layout of generate.py's tensors (the processor's is channels-last, with
        which a convolution may round otherwise)."""
        width, height = size
        return self.image_processor.preprocess(image, height=height, width=width).contiguous()

    def edit_tensors(self, inputs: torch.Tensor, styles: torch.Tensor, prompts: list[str],
                     generators: list[torch.Generator], *, num_inference_steps: int, scales: GuidanceScales,
                     eta: float = 1.0, nb_gen: int = 1, research_code_compat: bool = False) -> torch.Tensor:
        """Edits (N, G, 3, h, w) in [0, 1] of inputs and styles (N, 3, h, w) in [0, 1], one prompt
        and one generator per input: the sampler of training (4-branch guidance, one UNet call per
        step; ``research_code_compat``: the research code's lagged Euler input scale, see
        :func:`sample_edits`), with a progress bar over the steps. generate.py calls this for each
        batch."""
        denoiser, device = self.denoiser, self._execution_device
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        cond = encode_conditioning(self.vae, self.tokenizer, self.text_encoder, inputs, styles, prompts)
        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            edits = sample_edits(denoiser, self.scheduler, self.vae, cond, nb_gen=nb_gen, scales=scales, eta=eta,
                                 generator=generators, research_code_compat=research_code_compat,
                                 on_step=lambda _: bar.update()).images
        self.maybe_free_model_hooks()
        return edits

    @property
    def denoiser(self) -> torch.nn.Module:
        """What the sampler calls: the policy, else the registered UNet and style module
        (:class:`Denoiser`; an adapter export's only once its LoRA is loaded, or fused)."""
        if self.policy is not None:
            return self.policy
        if self.info.get("unet") == "adapter" and not getattr(self.unet, "peft_config", None) \
                and not self.num_fused_loras:
            folder = self.name_or_path or "<the export>"
            raise ValueError(f"this pipeline's UNet lacks its LoRA (an adapter export): load it with "
                             f"pipe.load_lora_weights({str(folder)!r}), or load the export with "
                             f"EditSpecialistPipeline.from_pretrained")
        return Denoiser(self.unet, self.style_module)

    def generator(self, generator: torch.Generator | int | None) -> torch.Generator:
        """A generator on the pipeline's execution device from an int seed (:func:`check_seed`; a
        random one for None)."""
        if isinstance(generator, torch.Generator):
            return generator
        seed = check_seed(generator) if generator is not None else int(np.random.SeedSequence().generate_state(1)[0])
        return torch.Generator(self._execution_device).manual_seed(seed)

    def default_prompt(self, input_name: str | None = None, style_name: str | None = None) -> str:
        """The method's first template with the given names or the specialist's."""
        input_name = input_name or self.info.get("input_name")
        style_name = style_name or self.info.get("style_name")
        if not input_name or not style_name:
            raise ValueError("give a prompt, or input_name and style_name (this model records no edit names)")
        return PROMPT_TEMPLATES[0].format(input=input_name, style=style_name)

    @property
    def resize_filter(self) -> str:
        """The filter that resized the specialist's training images (``resize_filter``), used for the
        input and style images; an export written before that key existed was trained with "bicubic"."""
        return self.info.get("resize_filter", "bicubic")

    @property
    def max_side(self) -> int:
        """Default longest side of the working image: the training resolution, else 512."""
        return self.info.get("resolution") or BASE_MAX_SIDE

    @contextmanager
    def base_model(self):
        """Within the block the pipeline edits with the base InstructPix2Pix it was trained from
        (the policy's frozen reference: LoRA off, initial visual-prompt modules), on the execution
        device (under ``enable_model_cpu_offload`` too)."""
        if self.policy is None:
            raise ValueError("this pipeline holds no base model (loaded from an export other than a compact adapter "
                             "export): load the base model with from_pretrained")
        with self.policy.reference(device=self._execution_device):
            yield self

    # ---- export ----

    def save_pretrained(self, save_directory: str | Path, *, merge_lora: bool = False, components: str = "copy",
                        overwrite: bool = False) -> Path:
        """Write an export that :meth:`from_pretrained` loads offline (layout in
        :mod:`editspecialists.formats.export`); nothing is written outside ``save_directory``.

        merge_lora: the UNet with its LoRA fused (``fuse_lora``, then ``unload_lora``), else the
        UNet without it and the LoRA in diffusers' format (``save_lora_weights``); a UNet without
        LoRA (full fine-tuning, or an export's fused LoRA) is written whole. components: "copy"
        (a diffusers pipeline folder holding every component) or "reference" (the compact export:
        only what training changed; the base components are loaded from the base model's id and
        revision). A non-empty folder is refused unless ``overwrite``.
        """
        if components not in export.COMPONENTS:
            raise ValueError(f"components must be one of {list(export.COMPONENTS)}, got {components!r}")
        folder = Path(save_directory)
        export.check_output_folder(folder, overwrite)
        adapter = lora_adapter(self.unet)
        form = "merged" if merge_lora or adapter is None else "adapter"
        info = {key: value for key, value in self.info.items() if key != "format"}
        info.update(method_version=package_metadata.version("editspecialists"), unet=form, components=components)
        lora = {} if form == "merged" else get_peft_model_state_dict(self.unet, adapter_name=adapter)
        compact_adapter = components == "reference" and form == "adapter"
        written = None if compact_adapter else self.export_pipeline(form, adapter, info)

        def write(tmp: Path) -> None:
            (tmp / export.MODEL_CARD).write_text(model_card(info))
            if components == "copy":
                DiffusionPipeline.save_pretrained(written, tmp)
            else:
                self.save_trained_parts(tmp, written)
            if lora:
                self.save_lora_weights(tmp, unet_lora_layers=lora,
                                       unet_lora_adapter_metadata=self.unet.peft_config[adapter].to_dict())
            export.write_metadata(tmp, info)

        stored = [self.style_module] + ([] if compact_adapter else [written.unet])
        if components == "copy":
            stored += [written.vae, written.text_encoder]
        needed = sum(tensor_bytes(model.state_dict().values()) for model in stored) + tensor_bytes(lora.values())
        return writing.write_folder(folder, write, "export", needed,
                                    f"Nothing was written to {folder}. Free some space, then run again: "
                                    f"{command_with({})}")

    def save_trained_parts(self, folder: Path, written: "EditSpecialistPipeline | None") -> None:
        """The compact export's components: the scheduler, the style module, and the merged UNet of
        ``written`` or (``written`` None: an adapter export) only the UNet's trained conv_in."""
        self.scheduler.save_pretrained(folder / "scheduler")
        self.style_module.save_pretrained(folder / export.STYLE_MODULE)
        if written is not None:
            written.unet.save_pretrained(folder / "unet")
        else:
            conv_in = self.unet.conv_in.state_dict()
            save_file({f"conv_in.{name}": tensor.contiguous() for name, tensor in conv_in.items()},
                      str(folder / export.CONV_IN))

    def export_pipeline(self, form: str, adapter: str | None, info: dict) -> "EditSpecialistPipeline":
        """The pipeline an export of ``form`` writes: these components, ``info``, and the UNet
        without its LoRA adapter (a copy; the adapter fused in for "merged")."""
        unet = self.unet
        if adapter is not None:
            unet = copy.deepcopy(unet)
            if form == "merged":
                unet.fuse_lora(adapter_names=[adapter])
            unet.unload_lora()
        return type(self)(self.vae, self.text_encoder, self.tokenizer, unet, self.style_module, self.scheduler,
                          info=info)


# DiffusionPipeline.from_pretrained looks the class a model_index.json names up in the diffusers
# namespace: naming this one there lets it load an export (and imports the style module's module,
# which diffusers requires of a component defined outside it).
setattr(diffusers, EditSpecialistPipeline.__name__, EditSpecialistPipeline)

MAX_SEED = 2**64 - 1  # torch generators take seeds from 0 to 2**64 - 1


def check_seed(seed) -> int:
    """``seed`` as an int from 0 to :data:`MAX_SEED`; a ValueError naming the range otherwise."""
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"the seed must be a whole number from 0 to 2**64 - 1 = {MAX_SEED}, got {seed!r}")
    return int(seed)


def tensor_bytes(tensors) -> int:
    """Bytes of the values of ``tensors`` (an iterable of tensors)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def export_checkpoint(load_checkpoint: str, out: str | Path, **options) -> Path:
    """scripts/export.py: the specialist of ``load_checkpoint`` (checkpoint, weights file or run
    folder) written to ``out`` by :meth:`EditSpecialistPipeline.save_pretrained` with ``options``."""
    if not load_checkpoint:
        raise ValueError("--config.load_checkpoint is empty: give the run or checkpoint to export")
    export.check_output_folder(Path(out), options.get("overwrite", False))
    return EditSpecialistPipeline.from_checkpoint(load_checkpoint).save_pretrained(out, **options)


# ---- what a model is ----

def checkpoint_info(checkpoint: Path, trained, scheduler: str) -> dict:
    """The metadata of a checkpoint's specialist: base model, names, resolution, defaults,
    architecture, a summary of its training and its provenance."""
    return {
        "base": {"model": trained.pretrained.model, "revision": trained.pretrained.revision},
        "scheduler": scheduler, "trained": True,
        "input_name": trained.input_name, "style_name": trained.style_name,
        "resolution": trained.data_resize, "resize_filter": trained.resize_filter,
        "architecture": ckpt.architecture_of(trained),
        "defaults": {"num_inference_steps": trained.sample.num_steps, "guidance_scale": trained.sample.guidance_scale,
                     "image_guidance_scale": trained.sample.image_guidance_scale,
                     "style_image_guidance_scale": trained.sample.style_image_guidance_scale,
                     "eta": trained.sample.eta},
        "training": {key: config_value(trained, key) for key in TRAINING_SUMMARY_KEYS},
        "source": {"checkpoint": str(Path(checkpoint).resolve()), "weights_sha256": ckpt.weights_sha256(checkpoint),
                   "trainer": ckpt.read_trainer_state(checkpoint)},
    }


def config_value(config, dotted_key: str):
    """A config value by dotted key as plain JSON (None when the run's config lacks it)."""
    value = value_at(config, dotted_key, None)
    return value.to_dict() if hasattr(value, "to_dict") else value


# ---- LoRA ----

def lora_adapter(unet) -> str | None:
    """The name of the UNet's LoRA adapter (peft), None without one; several are refused."""
    names = list(getattr(unet, "peft_config", None) or {})
    if len(names) > 1:
        raise ValueError(f"the UNet holds {len(names)} LoRA adapters {names}: delete all but one "
                         f"(unet.delete_adapters) before exporting")
    return names[0] if names else None


STYLE_MODULE_WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' SAFETENSORS_WEIGHTS_NAME


def load_module_weights(module: torch.nn.Module, path: Path, prefix: str = "",
                        what: str = "the weights this base model's specialist needs") -> None:
    """Load the tensors of the safetensors file ``path`` whose names start with ``prefix`` (stripped)
    into ``module`` (every weight, shapes equal); an :class:`~editspecialists.formats.export.ExportError`
    naming the file and saying it does not hold ``what`` otherwise."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        module.load_state_dict({name[len(prefix):]: tensor for name, tensor in tensors.items()
                                if name.startswith(prefix)}, strict=True)
    except (OSError, RuntimeError) as error:
        raise export.ExportError(f"{path} does not hold {what} ({short_reason(error)})") from error


def load_compact_adapter(folder: Path, unet) -> None:
    """A compact adapter export's trained conv_in and LoRA (diffusers' format) into the policy's
    UNet, whose adapter the export's architecture shaped; every LoRA weight must be in the file."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    load_module_weights(unet.conv_in, folder / export.CONV_IN, prefix="conv_in.")
    path = folder / export.LORA_WEIGHTS
    adapter = lora_adapter(unet)
    try:
        lora = {name.removeprefix("unet."): tensor for name, tensor in load_file(str(path)).items()}
        expected = set(get_peft_model_state_dict(unet, adapter_name=adapter))
        if set(lora) != expected:
            raise RuntimeError(f"{len(expected - set(lora))} LoRA weights missing, {len(set(lora) - expected)} "
                               f"unexpected")
        set_peft_model_state_dict(unet, lora, adapter_name=adapter)
    except (OSError, RuntimeError) as error:
        raise export.ExportError(f"{path} does not hold the LoRA of this base model's specialist "
                                 f"({short_reason(error)})") from error


def short_reason(error: Exception) -> str:
    """The first two non-empty lines of an error's message (a state-dict error's header and its
    first mismatch), joined."""
    return " ".join([line.strip() for line in str(error).splitlines() if line.strip()][:2])


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


# ---- images ----

def upright_rgb(image) -> Image.Image:
    """An RGB PIL image from a PIL image (EXIF orientation applied) or an image file path."""
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a file path, got {type(image).__name__}")
    return to_rgb(ImageOps.exif_transpose(image))


def working_size(width: int, height: int, max_side: int, multiple: int) -> tuple[int, int]:
    """(w, h) for editing a width × height image: scaled down (never up) so the longer side is at
    most ``max_side``, then each side rounded to the nearest multiple of ``multiple`` (the VAE's
    factor; at least ``multiple``)."""
    scale = min(1.0, max_side / max(width, height))
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))


def resize_tensors(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(G, 3, h, w) images resized (bicubic, antialiased) to ``size`` = (W, H); unchanged if equal."""
    width, height = size
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)
