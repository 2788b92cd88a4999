"""What every specialist pipeline shares, whatever its editor (:class:`SpecialistPipelineMixin`).

A specialist pipeline is a diffusers ``DiffusionPipeline`` whose registered components are the
editor's (VAE, text encoders, tokenizers, scheduler), its denoising network with the widened input
layer (the *backbone*: InstructPix2Pix's ``unet``, FLUX.1 Kontext's ``transformer``) and the style
module; its config entry ``info`` says what the model is. The mixin holds loading (export,
checkpoint, run folder, base model), editing (the training sampler, :func:`sample_edits`), the base
model (the policy's frozen reference) and the export; a family's pipeline class says which
components it has and how it encodes its conditioning and sets its schedule:

- :class:`~editspecialists.specialist.pipeline.EditSpecialistPipeline`: InstructPix2Pix;
- :class:`~editspecialists.specialist.kontext_pipeline.KontextSpecialistPipeline`: FLUX.1 Kontext.

Image size: training and generate.py resize the short side to ``data_resize`` and crop the central
square. A pipeline never crops: its ``image_processor`` (diffusers' ``VaeImageProcessor`` with the
specialist's resize filter) resizes the input (any size, any mode; RGBA is composited on white) so
that both sides are multiples of :attr:`~SpecialistPipelineMixin.size_multiple` (the VAE's factor;
twice it for Kontext's 2×2 packed patches) and the longer is at most ``max_side`` (default: the
specialist's training resolution; it never enlarges); the edit is resized back to the input's size
(bicubic, antialiased: the image processor's tensor resize is nearest-neighbour). A square input of
``data_resize`` pixels is therefore edited exactly as generate.py edits it. The style image is
resized to cover the working size and centre-cropped to it in the training data's arithmetic.
"""

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from peft import get_peft_model_state_dict
from PIL import Image, ImageOps
from safetensors.torch import save_file

from editspecialists import writing
from editspecialists.command_line import command_with
from editspecialists.config_keys import parse_sde_window, value_at
from editspecialists.data.dataset import PROMPT_TEMPLATES
from editspecialists.data.images import DEFAULT_RESIZE_FILTER, read_rgb, resize_cover, to_rgb
from editspecialists.diffusion.bundle import EditModelSpec, base_family, build_edit_model, default_scheduler
from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.kontext import MAX_SEQUENCE_LENGTH
from editspecialists.diffusion.logprob import windowed_eta
from editspecialists.diffusion.pipeline import FAMILY_NAMES, INSTRUCT_PIX2PIX, cast_model
from editspecialists.diffusion.policy import StylePromptAttention
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
# The registered components a pipeline takes from its base editor as they are (not the trained ones).
TRAINED_COMPONENTS = ("style_module",)


@dataclass
class EditSpecialistOutput(BaseOutput):
    """``images``: the edits, PIL RGB images (``output_type="pil"``) or a (G, 3, H, W) float tensor
    in [0, 1] (``"pt"``), at the input's size; ``prompt``: the instruction used."""

    images: list[Image.Image] | torch.Tensor
    prompt: str


class SpecialistPipelineMixin:
    """The shared part of a specialist pipeline (mixed in before ``DiffusionPipeline``). A family's
    class sets :attr:`family`, :attr:`denoiser_class` (whose ``backbone_name`` and ``input_layer``
    name the backbone component and its widened layer), :attr:`backbone_class`, and implements
    :meth:`load_base_pipeline`, :meth:`conditioning`, :meth:`set_schedule` and ``__call__``."""

    family = INSTRUCT_PIX2PIX
    denoiser_class = None
    backbone_class = None
    generation_autocast_dtype = torch.float16  # generate.py's CUDA autocast (sample.generation_autocast)

    def init_specialist(self, info) -> None:
        """Record ``info`` in the config and set the image processor; call at the end of ``__init__``."""
        self.register_to_config(info=info or {})
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.size_multiple, resample=self.resize_filter,
                                                 do_normalize=False)  # [0, 1] in and out, as edit_tensors
        self.policy = None

    @property
    def info(self) -> dict:
        """What the model is (the export's metadata without its format): family, base model, names,
        training resolution and defaults, provenance; a pipeline config entry (model_index.json)."""
        return self.config.info

    @property
    def backbone_name(self) -> str:
        return self.denoiser_class.backbone_name

    @property
    def backbone(self) -> torch.nn.Module:
        """The denoising network (``unet`` or ``transformer``)."""
        return getattr(self, self.backbone_name)

    @property
    def size_multiple(self) -> int:
        """Both sides of a working image are multiples of this: the VAE's downsampling factor."""
        return self.vae_scale_factor

    # ---- loading ----

    @classmethod
    def pipeline_for(cls, family: str) -> type:
        """The pipeline class of a specialist of ``family``: this one (a family's class loads only
        its own family; ``EditSpecialistPipeline`` loads every one)."""
        if family != cls.family:
            raise ValueError(f"a specialist of the {family} family: load it with EditSpecialistPipeline.from_pretrained "
                             f"(any family), not {cls.__name__}")
        return cls

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32,
                        device: str | torch.device | None = None):
        """Load an exported folder, a checkpoint folder (or its weights file), a run folder (its
        newest checkpoint that verifies) or a base editor (hub id or diffusers folder: the untrained
        visual-prompt model, with a warning), as the pipeline of its family. Errors name the file
        at fault; a folder with marks of an export but no complete export is refused, never loaded
        as the base.

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
    def from_spec(cls, spec: EditModelSpec, info: dict):
        """The untrained policy of ``spec``, built by :func:`build_edit_model` on the CPU in fp32 (as
        every specialist is before its weights load; :meth:`to` places it), with ``info``, as the
        pipeline of ``spec.family``."""
        target = cls.pipeline_for(spec.family)
        model = build_edit_model(replace(spec, frozen_dtype=torch.float32, use_xformers=False))
        backbone = {target.denoiser_class.backbone_name: model.policy.backbone}
        pipe = target(**target.base_components(model), **backbone, style_module=model.policy.style_module, info=info)
        pipe.policy = model.policy.eval()
        return pipe

    @classmethod
    def base_components(cls, source) -> dict:
        """The components this pipeline takes from an edit model or a loaded base pipeline as they
        are: every registered one but the backbone and the style module."""
        source = getattr(source, "pipe", None) or source
        expected, _ = DiffusionPipeline._get_signature_keys(cls)
        trained = (cls.denoiser_class.backbone_name, *TRAINED_COMPONENTS)
        return {name: getattr(source, name) for name in expected if name not in trained}

    @classmethod
    def from_checkpoint(cls, path: str | Path, scheduler: str | None = None):
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
    def from_base(cls, model_id: str, revision: str = "main", scheduler: str | None = None, *, warn: bool = True):
        """The base editor (its family read from its ``model_index.json``) with the visual-prompt
        modules at their initial, identity state; ``scheduler``: default the family's first;
        ``warn``: log a warning that its edits are the untrained base model's."""
        family = base_family(model_id, revision)
        spec = EditModelSpec(model_id, revision, scheduler or default_scheduler(family), family=family)
        return cls.untrained(spec, warn=warn)

    @classmethod
    def untrained(cls, spec: EditModelSpec, *, warn: bool = True):
        """:meth:`from_base` with the policy ``spec`` describes (a run config's, say)."""
        if warn:
            logger.warning("%s is the base %s model, untrained: its edits are the base model's (visual-prompt "
                           "modules at their initial, identity state; no specialist loaded)", spec.model,
                           FAMILY_NAMES[spec.family])
        info = {"family": spec.family, "base": {"model": spec.model, "revision": spec.revision},
                "scheduler": spec.scheduler, "trained": False, "input_name": None, "style_name": None,
                "resolution": None, "resize_filter": DEFAULT_RESIZE_FILTER, "architecture": spec.architecture(),
                **model_settings(spec), "source": None, "training": None, "defaults": {}}
        return cls.from_spec(spec, info)

    @classmethod
    def from_export(cls, folder: Path):
        """An exported folder (:mod:`editspecialists.formats.export`), its files verified first, as
        the pipeline of its family: diffusers' ``from_pretrained``, then for an adapter export the
        LoRA onto the backbone (``load_lora_adapter``: ``pipe.load_lora_weights`` would also look
        for text-encoder LoRA); a compact export through :meth:`from_compact_export`."""
        metadata = export.read_metadata(folder)
        export.verify_export(folder)
        info = {key: value for key, value in metadata.items() if key != "format"}
        target = cls.pipeline_for(info.get("family", INSTRUCT_PIX2PIX))
        if info.get("components") == "reference":
            return target.from_compact_export(folder, info)
        specialist = super(SpecialistPipelineMixin, target).from_pretrained(str(folder))
        if info["unet"] == "adapter":
            specialist.backbone.load_lora_adapter(str(folder), weight_name=export.LORA_WEIGHTS,
                                                  prefix=specialist.backbone_name)
        return specialist

    @classmethod
    def from_compact_export(cls, folder: Path, info: dict):
        """A compact export ("components": "reference"): the base model built from its id and
        revision, with the export's trained parts. An adapter export gives a pipeline with its
        ``policy`` (built by :func:`build_edit_model`, so :meth:`base_model` works); a merged one
        the base pipeline's components with the export's backbone."""
        spec = spec_of(info)
        backbone = cls.denoiser_class.backbone_name
        if info["unet"] == "adapter":
            specialist = cls.from_spec(spec, info)
            load_compact_adapter(folder, specialist.backbone, backbone, cls.denoiser_class.input_layer)
        else:
            base = cls.load_base_pipeline(spec)
            style_config = StylePromptAttention.load_config(str(folder / export.STYLE_MODULE))
            specialist = cls(**cls.base_components(base), **{backbone: cls.backbone_class.from_pretrained(
                folder / backbone)}, style_module=StylePromptAttention.from_config(style_config), info=info)
        load_module_weights(specialist.style_module, folder / export.STYLE_MODULE / STYLE_MODULE_WEIGHTS)
        specialist.scheduler = type(specialist.scheduler).from_pretrained(str(folder), subfolder="scheduler")
        return specialist

    def to(self, *args, **kwargs):
        """diffusers' ``to``: every component to a device and/or dtype; the policy's frozen
        reference follows the backbone."""
        super().to(*args, **kwargs)
        if self.policy is not None:
            cast_model(self.policy, self.backbone.device, self.backbone.dtype)
        return self

    # ---- editing ----

    def edit_image(self, image, style_image, prompt: str | None, *, input_name: str | None, style_name: str | None,
                   scales: GuidanceScales, num_inference_steps: int, generator, num_images_per_prompt: int,
                   eta: float, sde_window: str, max_side: int | None, output_type: str) -> EditSpecialistOutput:
        """What a family's ``__call__`` does once it has its guidance scales: ``image`` (PIL image or
        file path, any size and mode) edited towards ``style_image``; see the family's ``__call__``."""
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        prompt = prompt or self.default_prompt(input_name, style_name)
        source, style = upright_rgb(image), upright_rgb(style_image)
        size = working_size(*source.size, max_side or self.max_side, self.size_multiple)
        inputs = self.preprocess(source, size)
        styles = self.preprocess(resize_cover(style, size, self.resize_filter), size)
        step_eta = windowed_eta(num_inference_steps, eta, parse_sde_window(sde_window))
        edits = self.edit_tensors(inputs, styles, [prompt], [self.generator(generator)],
                                  num_inference_steps=num_inference_steps, scales=scales, eta=step_eta,
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
                     eta: float | torch.Tensor = 1.0, nb_gen: int = 1,
                     research_code_compat: bool = False) -> torch.Tensor:
        """Edits (N, G, 3, h, w) in [0, 1] of inputs and styles (N, 3, h, w) in [0, 1], one prompt
        and one generator per input: the sampler of training (``eta`` a number, or per step (T,) as
        :func:`~editspecialists.diffusion.sampler.sampling_eta` gives it; ``research_code_compat``:
        the research code's lagged Euler input scale, see :func:`sample_edits`), with a progress
        bar over the steps. generate.py calls this for each batch."""
        denoiser, device = self.denoiser, self._execution_device
        self.set_schedule(num_inference_steps, *inputs.shape[-2:], device)
        cond = self.conditioning(inputs, styles, prompts)
        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            edits = sample_edits(denoiser, self.scheduler, self.vae, cond, nb_gen=nb_gen, scales=scales, eta=eta,
                                 generator=generators, research_code_compat=research_code_compat,
                                 on_step=lambda _: bar.update()).images
        self.maybe_free_model_hooks()
        return edits

    @property
    def denoiser(self) -> torch.nn.Module:
        """What the sampler calls: the policy, else the registered backbone and style module
        (:attr:`denoiser_class`; an adapter export's only once its LoRA is loaded, or fused)."""
        if self.policy is not None:
            return self.policy
        if self.info.get("unet") == "adapter" and not getattr(self.backbone, "peft_config", None) \
                and not self.num_fused_loras:
            folder = self.name_or_path or "<the export>"
            raise ValueError(f"this pipeline's {self.backbone_name} lacks its LoRA (an adapter export): load it with "
                             f"pipe.load_lora_weights({str(folder)!r}), or load the export with "
                             f"EditSpecialistPipeline.from_pretrained")
        return self.denoiser_class(self.backbone, self.style_module)

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
        """Within the block the pipeline edits with the base editor it was trained from (the
        policy's frozen reference: LoRA off, initial visual-prompt modules), on the execution
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

        merge_lora: the backbone with its LoRA fused (``fuse_lora``, then ``unload_lora``), else the
        backbone without it and the LoRA in diffusers' format (``save_lora_weights``); a backbone
        without LoRA (full fine-tuning, or an export's fused LoRA) is written whole. components:
        "copy" (a diffusers pipeline folder holding every component) or "reference" (the compact
        export: only what training changed; the base components are loaded from the base model's
        id and revision). A non-empty folder is refused unless ``overwrite``.
        """
        if components not in export.COMPONENTS:
            raise ValueError(f"components must be one of {list(export.COMPONENTS)}, got {components!r}")
        folder = Path(save_directory)
        export.check_output_folder(folder, overwrite)
        adapter = lora_adapter(self.backbone)
        form = "merged" if merge_lora or adapter is None else "adapter"
        info = {key: value for key, value in self.info.items() if key != "format"}
        info.update(family=self.family, method_version=package_metadata.version("editspecialists"), unet=form,
                    components=components)
        lora = {} if form == "merged" else get_peft_model_state_dict(self.backbone, adapter_name=adapter)
        compact_adapter = components == "reference" and form == "adapter"
        written = None if compact_adapter else self.export_pipeline(form, adapter, info)

        def write(tmp: Path) -> None:
            (tmp / export.MODEL_CARD).write_text(model_card(info))
            if components == "copy":
                DiffusionPipeline.save_pretrained(written, tmp)
            else:
                self.save_trained_parts(tmp, written)
            if lora:
                metadata = self.backbone.peft_config[adapter].to_dict()
                self.save_lora_weights(tmp, **{f"{self.backbone_name}_lora_layers": lora,
                                               f"{self.backbone_name}_lora_adapter_metadata": metadata})
            export.write_metadata(tmp, info)

        stored = [self.style_module] + ([] if compact_adapter else [written.backbone])
        if components == "copy":
            stored += [module for name, module in written.components.items()
                       if isinstance(module, torch.nn.Module) and name not in (self.backbone_name, "style_module")]
        needed = sum(tensor_bytes(model.state_dict().values()) for model in stored) + tensor_bytes(lora.values())
        return writing.write_folder(folder, write, "export", needed,
                                    f"Nothing was written to {folder}. Free some space, then run again: "
                                    f"{command_with({})}")

    def save_trained_parts(self, folder: Path, written) -> None:
        """The compact export's components: the scheduler, the style module, and the merged backbone
        of ``written`` or (``written`` None: an adapter export) only the backbone's trained input layer."""
        self.scheduler.save_pretrained(folder / "scheduler")
        self.style_module.save_pretrained(folder / export.STYLE_MODULE)
        if written is not None:
            written.backbone.save_pretrained(folder / self.backbone_name)
            return
        layer = self.denoiser_class.input_layer
        weights = getattr(self.backbone, layer).state_dict()
        save_file({f"{layer}.{name}": tensor.contiguous() for name, tensor in weights.items()},
                  str(folder / export.input_layer_file(self.backbone_name, layer)))

    def export_pipeline(self, form: str, adapter: str | None, info: dict):
        """The pipeline an export of ``form`` writes: these components, ``info``, and the backbone
        without its LoRA adapter (a copy; the adapter fused in for "merged")."""
        backbone = self.backbone
        if adapter is not None:
            backbone = copy.deepcopy(backbone)
            if form == "merged":
                backbone.fuse_lora(adapter_names=[adapter])
            backbone.unload_lora()
        return type(self)(**{**self.components, self.backbone_name: backbone}, info=info)


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


# ---- what a model is ----

def model_settings(spec: EditModelSpec) -> dict:
    """The settings beyond the base model and LoRA that rebuild ``spec``'s policy (:func:`spec_of`)."""
    return {"lora_targets": list(spec.lora_targets) if spec.lora_targets else None,
            "max_sequence_length": spec.max_sequence_length}


def spec_of(info: dict) -> EditModelSpec:
    """The :class:`EditModelSpec` of a pipeline's ``info`` (an export's metadata): family, base
    model, sampler, LoRA; an export written before the family was recorded is InstructPix2Pix's."""
    base = info["base"]
    spec = EditModelSpec(base["model"], base["revision"], info["scheduler"],
                         family=info.get("family", INSTRUCT_PIX2PIX),
                         lora_targets=tuple(info.get("lora_targets") or ()) or None,
                         max_sequence_length=info.get("max_sequence_length", MAX_SEQUENCE_LENGTH))
    return spec.with_architecture(info["architecture"])


def checkpoint_info(checkpoint: Path, trained, scheduler: str) -> dict:
    """The metadata of a checkpoint's specialist: family, base model, names, resolution, defaults,
    architecture, a summary of its training and its provenance."""
    spec = EditModelSpec.from_config(trained, scheduler=scheduler)
    return {
        "family": spec.family,
        "base": {"model": trained.pretrained.model, "revision": trained.pretrained.revision},
        "scheduler": scheduler, "trained": True,
        "input_name": trained.input_name, "style_name": trained.style_name,
        "resolution": trained.data_resize, "resize_filter": trained.resize_filter,
        "architecture": ckpt.architecture_of(trained), **model_settings(spec),
        "defaults": {"num_inference_steps": trained.sample.num_steps, "guidance_scale": trained.sample.guidance_scale,
                     "image_guidance_scale": trained.sample.image_guidance_scale,
                     "style_image_guidance_scale": trained.sample.style_image_guidance_scale,
                     "eta": trained.sample.eta, "sde_window": value_at(trained, "sample.sde_window", "")},
        "training": {key: config_value(trained, key) for key in TRAINING_SUMMARY_KEYS},
        "source": {"checkpoint": str(Path(checkpoint).resolve()), "weights_sha256": ckpt.weights_sha256(checkpoint),
                   "trainer": ckpt.read_trainer_state(checkpoint)},
    }


def config_value(config, dotted_key: str):
    """A config value by dotted key as plain JSON (None when the run's config lacks it)."""
    value = value_at(config, dotted_key, None)
    return value.to_dict() if hasattr(value, "to_dict") else value


# ---- weights ----

def lora_adapter(backbone) -> str | None:
    """The name of the backbone's LoRA adapter (peft), None without one; several are refused."""
    names = list(getattr(backbone, "peft_config", None) or {})
    if len(names) > 1:
        raise ValueError(f"the model holds {len(names)} LoRA adapters {names}: delete all but one "
                         f"(delete_adapters) before exporting")
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


def load_compact_adapter(folder: Path, backbone, backbone_name: str, input_layer: str) -> None:
    """A compact adapter export's trained input layer and LoRA (diffusers' format, under
    ``backbone_name``) into the policy's backbone, whose adapter the export's architecture shaped;
    every LoRA weight must be in the file."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    load_module_weights(getattr(backbone, input_layer), folder / export.input_layer_file(backbone_name, input_layer),
                        prefix=f"{input_layer}.")
    path = folder / export.LORA_WEIGHTS
    adapter = lora_adapter(backbone)
    try:
        lora = {name.removeprefix(f"{backbone_name}."): tensor for name, tensor in load_file(str(path)).items()}
        expected = set(get_peft_model_state_dict(backbone, adapter_name=adapter))
        if set(lora) != expected:
            raise RuntimeError(f"{len(expected - set(lora))} LoRA weights missing, {len(set(lora) - expected)} "
                               f"unexpected")
        set_peft_model_state_dict(backbone, lora, adapter_name=adapter)
    except (OSError, RuntimeError) as error:
        raise export.ExportError(f"{path} does not hold the LoRA of this base model's specialist "
                                 f"({short_reason(error)})") from error


def short_reason(error: Exception) -> str:
    """The first two non-empty lines of an error's message (a state-dict error's header and its
    first mismatch), joined."""
    return " ".join([line.strip() for line in str(error).splitlines() if line.strip()][:2])


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
    most ``max_side``, then each side rounded to the nearest multiple of ``multiple`` (at least
    ``multiple``)."""
    scale = min(1.0, max_side / max(width, height))
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))


def resize_tensors(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(G, 3, h, w) images resized (bicubic, antialiased) to ``size`` = (W, H); unchanged if equal."""
    width, height = size
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)
