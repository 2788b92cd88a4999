"""``EditSpecialistPipeline``: load a specialist and edit one image, as with any diffusers pipeline.

    from editspecialists import EditSpecialistPipeline
    pipe = EditSpecialistPipeline.from_pretrained("exported/car_lego")
    edit = pipe(Image.open("car.jpg"), Image.open("lego.jpg"), generator=0).images[0]

It loads through the training code (``load_pipeline``, ``build_policy``, the checkpoint checks)
and edits through the sampler and guidance of training; generate.py edits its batches with
:meth:`EditSpecialistPipeline.edit_tensors` too, so both give the same pixels for the same seed,
prompt and image at batch size 1.

Image size: training and generate.py resize the short side to ``data_resize`` and crop the
central square. The pipeline never crops: it resizes the input (any size, any mode; RGBA is
composited on white) so that both sides are multiples of 8 and the longer is at most ``max_side``
(default: the specialist's training resolution ``data_resize``; it never enlarges), edits, and
resizes the edit back to the input's size. A square input of ``data_resize`` pixels is therefore
edited exactly as generate.py edits it. The style image is resized to cover the working size and
centre-cropped to it (for a square, generate.py's own resize and crop).
"""

from __future__ import annotations

import copy
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from editspecialists import writing
from editspecialists.command_line import command_with
from editspecialists.config_keys import value_at
from editspecialists.data.dataset import PROMPT_TEMPLATES
from editspecialists.data.images import (DEFAULT_RESIZE_FILTER, image_to_tensor, read_rgb, resize_cover, resize_to,
                                         tensor_to_image, to_rgb)
from editspecialists.diffusion.guidance import (BranchInputs, EditConditioning, GuidanceScales, branch_epsilon,
                                                branch_inputs)
from editspecialists.diffusion.pipeline import (cast_model, encode_images, encode_prompts, load_pipeline,
                                                load_scheduler, place_encoders)
from editspecialists.diffusion.policy import VISUAL_PROMPT_CHANNELS, StylePromptAttention, build_policy
from editspecialists.diffusion.sampler import sample_edits
from editspecialists.specialist import folder as export
from editspecialists.specialist.model_card import model_card
from editspecialists.training import checkpoint as ckpt

logger = logging.getLogger(__name__)

# Both sides of the working image are multiples of this (the VAE's downsampling factor of SD).
SIDE_MULTIPLE = 8
# Longer side of the working image when the model records no training resolution (a base model).
BASE_MAX_SIDE = 512
# The LoRA of the untrained visual-prompt model (build_policy's defaults; identity at initialisation).
INITIAL_ARCHITECTURE = {"use_lora": "True", "lora_rank": "8", "lora_alpha": "8"}
# Run-config keys summarised in the export's metadata and model card.
TRAINING_SUMMARY_KEYS = ("seed", "num_epochs", "data_resize", "use_lora", "lora_rank", "lora_alpha",
                         "train.learning_rate", "train.eps", "train.beta", "sample.nb_gen", "sample.num_steps",
                         "reward.weights", "inputimg_dir", "styleimg_dir")


@dataclass
class EditSpecialistOutput:
    """``images``: the edits, PIL RGB images (``output_type="pil"``) or a (G, 3, H, W) float tensor
    in [0, 1] (``"pt"``), at the input's size; ``prompt``: the instruction used."""

    images: list[Image.Image] | torch.Tensor
    prompt: str


class MergedDenoiser(torch.nn.Module):
    """A 12-channel UNet (LoRA merged) and the style module: the guided noise prediction of
    :class:`~editspecialists.diffusion.policy.VisualPromptPolicy`, without its training parts."""

    def __init__(self, unet, style_module: StylePromptAttention):
        super().__init__()
        self.unet, self.style_module = unet, style_module

    def branch_inputs(self, cond: EditConditioning) -> BranchInputs:
        return branch_inputs(self.style_module, cond)

    def forward(self, scaled_latents, timesteps, cond, scales: GuidanceScales):
        if isinstance(cond, EditConditioning):
            cond = self.branch_inputs(cond)
        return branch_epsilon(self.unet, cond, scaled_latents, timesteps, scales)


class EditSpecialistPipeline:
    """The frozen VAE, text encoder and tokenizer, the denoiser (the visual-prompt policy, or a
    :class:`MergedDenoiser`), the scheduler, and ``info``: what the model is (base model, names,
    training resolution and defaults, provenance; the export's metadata)."""

    def __init__(self, vae, text_encoder, tokenizer, scheduler, denoiser, info: dict):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.scheduler, self.denoiser, self.info = scheduler, denoiser.eval(), info

    @property
    def device(self) -> torch.device:
        return self.vae.device

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
        return specialist.to(device, torch_dtype)

    @classmethod
    def from_checkpoint(cls, path: str | Path, scheduler: str | None = None) -> "EditSpecialistPipeline":
        """A checkpoint folder, its weights file or a run folder, rebuilt from the run's config.json
        (``scheduler``: the sampler family; default the run's)."""
        checkpoint = ckpt.resolve_checkpoint(path)
        trained = ckpt.saved_run_config(checkpoint)
        scheduler = scheduler or trained.pretrained.scheduler
        pipe = load_pipeline(trained.pretrained.model, revision=trained.pretrained.revision, scheduler=scheduler)
        policy = build_policy(pipe.unet, use_lora=trained.use_lora, lora_rank=trained.lora_rank,
                              lora_alpha=trained.lora_alpha)
        ckpt.load_weights(policy, checkpoint, ckpt.architecture_of(trained))
        logger.info("loaded %s", checkpoint)
        info = checkpoint_info(checkpoint, trained, scheduler)
        return cls(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, policy, info)

    @classmethod
    def from_base(cls, model_id: str, revision: str = "main", scheduler: str = "euler_ancestral", *,
                  warn: bool = True) -> "EditSpecialistPipeline":
        """The base InstructPix2Pix with the visual-prompt modules at their initial, identity state;
        ``warn``: log a warning that its edits are the untrained base model's."""
        if warn:
            logger.warning("%s is the base InstructPix2Pix model, untrained: its edits are the base model's "
                           "(visual-prompt modules at their initial, identity state; no specialist loaded)",
                           model_id)
        pipe = load_pipeline(model_id, revision=revision, scheduler=scheduler)
        policy = build_policy(pipe.unet, use_lora=True)
        info = {"base": {"model": model_id, "revision": revision}, "scheduler": scheduler, "trained": False,
                "input_name": None, "style_name": None, "resolution": None, "resize_filter": DEFAULT_RESIZE_FILTER,
                "architecture": INITIAL_ARCHITECTURE,
                "source": None, "training": None, "defaults": {}}
        return cls(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, policy, info)

    @classmethod
    def from_export(cls, folder: Path) -> "EditSpecialistPipeline":
        """An exported folder (:mod:`editspecialists.specialist.folder`), its files verified first."""
        info = export.read_metadata(folder)
        export.verify_export(folder)
        base = info["base"]
        if info["components"] == "copy":
            pipe = load_pipeline(str(folder), scheduler=info["scheduler"])
        else:
            pipe = load_pipeline(base["model"], revision=base["revision"], scheduler=info["scheduler"])
            pipe.scheduler = load_scheduler(str(folder), scheduler=info["scheduler"])
        if info["unet"] == "merged":
            unet = pipe.unet if info["components"] == "copy" else load_merged_unet(folder)
            denoiser = merged_denoiser(folder, unet)
        else:
            architecture = info["architecture"]
            denoiser = build_policy(pipe.unet, use_lora=architecture["use_lora"] == "True",
                                    lora_rank=int(architecture["lora_rank"]),
                                    lora_alpha=json.loads(architecture["lora_alpha"]))
            ckpt.load_weights(denoiser, folder / export.SPECIALIST, architecture)
        return cls(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, denoiser, info)

    def to(self, device, dtype: torch.dtype = torch.float32) -> "EditSpecialistPipeline":
        """Every model on ``device`` in ``dtype`` (in place; returned for chaining)."""
        place_encoders(self, device, dtype)
        cast_model(self.denoiser, device, dtype)
        return self

    # ---- editing ----

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
        size = working_size(*source.size, max_side or self.max_side)
        inputs = image_to_tensor(resize_to(source, size, self.resize_filter))[None]
        styles = image_to_tensor(resize_cover(style, size, self.resize_filter))[None]
        scales = GuidanceScales(guidance_scale, image_guidance_scale, style_image_guidance_scale)
        edits = self.edit_tensors(inputs, styles, [prompt], [self.generator(generator)],
                                  num_inference_steps=num_inference_steps, scales=scales, eta=eta,
                                  nb_gen=num_images_per_prompt)[0]
        edits = resize_tensors(edits, source.size)
        if output_type == "pt":
            return EditSpecialistOutput(edits, prompt)
        return EditSpecialistOutput([tensor_to_image(edit) for edit in edits], prompt)

    def edit_tensors(self, inputs: torch.Tensor, styles: torch.Tensor, prompts: list[str],
                     generators: list[torch.Generator], *, num_inference_steps: int, scales: GuidanceScales,
                     eta: float = 1.0, nb_gen: int = 1, research_code_compat: bool = False) -> torch.Tensor:
        """Edits (N, G, 3, h, w) in [0, 1] of inputs and styles (N, 3, h, w) in [0, 1], one prompt
        and one generator per input: the sampler of training (4-branch guidance, one UNet call per
        step; ``research_code_compat``: the research code's lagged Euler input scale, see
        :func:`sample_edits`). generate.py calls this for each batch."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        cond = EditConditioning(encode_images(self.vae, inputs.to(self.device)),
                                encode_images(self.vae, styles.to(self.device)),
                                encode_prompts(self.tokenizer, self.text_encoder, prompts),
                                encode_prompts(self.tokenizer, self.text_encoder, [""]))
        return sample_edits(self.denoiser, self.scheduler, self.vae, cond, nb_gen=nb_gen, scales=scales,
                            eta=eta, generator=generators, research_code_compat=research_code_compat).images

    def generator(self, generator: torch.Generator | int | None) -> torch.Generator:
        """A generator on the pipeline's device from an int seed (:func:`check_seed`; a random one
        for None)."""
        if isinstance(generator, torch.Generator):
            return generator
        seed = check_seed(generator) if generator is not None else int(np.random.SeedSequence().generate_state(1)[0])
        return torch.Generator(self.device).manual_seed(seed)

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
        (the policy's frozen reference: LoRA off, initial visual-prompt modules)."""
        reference = getattr(self.denoiser, "reference", None)
        if reference is None:
            raise ValueError("a merged export holds no base UNet: load the base model with from_pretrained")
        with reference():
            yield self

    # ---- export ----

    def save_pretrained(self, folder: str | Path, *, merge_lora: bool = False, components: str = "copy",
                        overwrite: bool = False) -> Path:
        """Write a self-contained export that :meth:`from_pretrained` loads offline (layout in
        :mod:`editspecialists.specialist.folder`); nothing is written outside ``folder``.

        merge_lora: the UNet with LoRA merged (else the checkpoint's weights as an adapter on the
        base UNet); components: "copy" the base pipeline's components, or "reference" its model id
        and revision. A non-empty ``folder`` is refused unless ``overwrite``.
        """
        if components not in export.COMPONENTS:
            raise ValueError(f"components must be one of {list(export.COMPONENTS)}, got {components!r}")
        if not hasattr(self.denoiser, "trainable_state_dict"):
            raise ValueError("this pipeline was loaded from a merged export: export its source checkpoint instead")
        folder = Path(folder)
        export.check_output_folder(folder, overwrite)
        unet = merged_unet(self.denoiser) if merge_lora else initial_unet(self.denoiser)
        info = {**self.info, "method_version": package_metadata.version("editspecialists"),
                "components": components, "unet": "merged" if merge_lora else "adapter"}
        info.pop("format", None)
        written = [unet] if components == "copy" or merge_lora else []
        written += [self.vae, self.text_encoder] if components == "copy" else []
        written += [self.denoiser.style_module] if merge_lora else []
        adapter = {} if merge_lora else self.denoiser.trainable_state_dict()

        def write(tmp: Path) -> None:
            (tmp / export.MODEL_CARD).write_text(model_card(info))
            if components == "copy":
                self.diffusers_pipeline(unet).save_pretrained(tmp)
            else:
                self.scheduler.save_pretrained(tmp / "scheduler")
                if merge_lora:
                    unet.save_pretrained(tmp / "unet")
            if merge_lora:
                ckpt.save_weights(tmp / export.STYLE_MODULE, self.denoiser.style_module.state_dict(), {})
            else:
                self.write_adapter(tmp / export.SPECIALIST)
            export.write_metadata(tmp, info)

        needed = sum(tensor_bytes(module.state_dict().values()) for module in written) + tensor_bytes(adapter.values())
        return writing.write_folder(folder, write, "export", needed,
                                    f"Nothing was written to {folder}. Free some space, then run again: "
                                    f"{command_with({})}")

    def diffusers_pipeline(self, unet):
        """A ``StableDiffusionInstructPix2PixPipeline`` of this pipeline's components and ``unet``."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        return StableDiffusionInstructPix2PixPipeline(self.vae, self.text_encoder, self.tokenizer, unet,
                                                      self.scheduler, safety_checker=None, feature_extractor=None,
                                                      requires_safety_checker=False)

    def write_adapter(self, folder: Path) -> None:
        """The policy's trainable weights as a checkpoint folder (weights, trainer state, hashes)."""
        folder.mkdir()
        ckpt.save_weights(folder / ckpt.WEIGHTS, self.denoiser.trainable_state_dict(), self.info["architecture"])
        (folder / ckpt.TRAINER_STATE).write_text(json.dumps((self.info.get("source") or {}).get("trainer", {})))
        ckpt.record_hashes(folder)


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


# ---- UNets of the export ----

def plain_unet_state(unet) -> dict[str, torch.Tensor]:
    """The UNet's state dict without PEFT's wrapping: LoRA tensors dropped, base layers renamed."""
    return {key.replace(".base_layer.", "."): value for key, value in unet.state_dict().items()
            if "lora_" not in key}


def unet_like(unet, state: dict[str, torch.Tensor], in_channels: int):
    """A fresh diffusers UNet of ``unet``'s config with ``in_channels`` inputs holding ``state``."""
    from diffusers import UNet2DConditionModel

    config = {**dict(unet.config), "in_channels": in_channels}
    fresh = UNet2DConditionModel.from_config(config)
    fresh.load_state_dict(state, strict=True)
    return fresh


def merged_unet(policy):
    """The policy's 12-channel UNet with its LoRA updates merged into the weights (a copy)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = copy.deepcopy(policy.unet)
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return unet_like(unet, plain_unet_state(unet), unet.config.in_channels)


def initial_unet(policy):
    """The base 8-channel UNet the policy was built from (LoRA off, the initial conv_in)."""
    with policy.reference():
        reference_unet = policy.active_unet  # full fine-tuning keeps a frozen copy
        state = plain_unet_state(reference_unet)
        state["conv_in.weight"] = reference_unet.conv_in.weight[:, :-VISUAL_PROMPT_CHANNELS]
    return unet_like(reference_unet, state, reference_unet.config.in_channels - VISUAL_PROMPT_CHANNELS)


def load_merged_unet(folder: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder / "unet")


def merged_denoiser(folder: Path, unet) -> MergedDenoiser:
    """The merged export's UNet (checked to take 12 channels) and its style module."""
    expected = export.SPECIALIST_UNET_CHANNELS
    if unet.config.in_channels != expected:
        raise export.ExportError(f"{folder / 'unet' / 'config.json'}: a UNet with {unet.config.in_channels} input "
                                 f"channels, not the specialist's {expected}: another architecture")
    style_module = StylePromptAttention.from_unet(unet)
    path = folder / export.STYLE_MODULE
    from safetensors.torch import load_file

    try:
        style_module.load_state_dict(load_file(str(path)), strict=True)
    except (OSError, RuntimeError) as error:
        raise export.ExportError(f"{path} does not hold this UNet's style module ({error})") from error
    return MergedDenoiser(unet, style_module.to(unet.device))


# ---- images ----

def upright_rgb(image) -> Image.Image:
    """An RGB PIL image from a PIL image (EXIF orientation applied) or an image file path."""
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a file path, got {type(image).__name__}")
    return to_rgb(ImageOps.exif_transpose(image))


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) for editing a width × height image: scaled down (never up) so the longer side is at
    most ``max_side``, then each side rounded to the nearest multiple of 8 (at least 8)."""
    scale = min(1.0, max_side / max(width, height))
    return tuple(max(SIDE_MULTIPLE, round(side * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE) for side in (width, height))


def resize_tensors(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(G, 3, h, w) images resized (bicubic, antialiased) to ``size`` = (W, H); unchanged if equal."""
    width, height = size
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)
