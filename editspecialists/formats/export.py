"""The exported specialist folder: its layout, metadata and checks.

An export is the diffusers pipeline folder of ``EditSpecialistPipeline`` (``save_pretrained``
writes it, ``from_pretrained`` reads it) plus our metadata, model card and hashes::

    <out>/editspecialist.json   metadata (:func:`read_metadata`): the format, the pipeline's ``info``
                                and the export's form; written last: a folder without it is not a
                                complete export
    <out>/README.md             model card (written first: even a partial export is marked as one)
    <out>/hashes.json           size and SHA-256 of every other file (checked when loading)
    <out>/model_index.json      the pipeline (diffusers): its class, its components' classes and its
                                config ``info`` (base model, names, training resolution, defaults,
                                provenance: what the pipeline edits with)
    <out>/vae/, text_encoder/, tokenizer/
                                the base pipeline's components
    <out>/scheduler/            the sampler the specialist was trained with
    <out>/style_module/         the trained style module (StylePromptAttention, a diffusers model)
    <out>/unet/                 the 12-channel UNet: with the LoRA fused into its weights ("unet":
                                "merged"), or without it ("adapter": the base weights and the trained
                                conv_in), the LoRA then in
    <out>/pytorch_lora_weights.safetensors
                                diffusers' LoRA format (peft's state dict under ``unet.``, its
                                LoraConfig in the file's metadata), as ``save_lora_weights`` writes it

The folder loads in diffusers alone (no hashes checked), once ``editspecialists.specialist.pipeline``
is imported (it names the pipeline and style module classes to diffusers)::

    from diffusers import DiffusionPipeline
    import editspecialists.specialist.pipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.load_lora_weights(folder)  # adapter exports: the LoRA onto pipe.unet

and the adapter onto the UNet alone::

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    unet.load_lora_adapter(folder, weight_name="pytorch_lora_weights.safetensors", prefix="unet")

The compact export ("components": "reference", ``--components=reference``) holds only what
training changed: no ``model_index.json``, ``vae/``, ``text_encoder/`` or ``tokenizer/`` (the loader
builds the base model from the id and revision in the metadata with
:func:`~editspecialists.diffusion.bundle.build_edit_model`, so it needs that model downloaded or
reachable), ``scheduler/`` and ``style_module/`` as above, and either the merged ``unet/`` or, for
an adapter export, the LoRA file above and the trained conv_in in

    <out>/unet_conv_in.safetensors
                                ``conv_in.weight`` and ``conv_in.bias`` of the 12-channel UNet

It loads only through ``EditSpecialistPipeline.from_pretrained``.

A FLUX.1 Kontext specialist's export ("family": "flux_kontext" in the metadata; an export without
the key is InstructPix2Pix's) has the same layout with the Kontext pipeline's components
(``text_encoder_2/`` and ``tokenizer_2/`` too), ``transformer/`` in place of ``unet/`` (its
``x_embedder`` taking 128 features: 64 packed latent and 64 packed style channels; the LoRA under
``transformer.`` in the LoRA file) and, in a compact adapter export,
``transformer_x_embedder.safetensors`` in place of ``unet_conv_in.safetensors``; the metadata's
"unet" key ("adapter" or "merged") then describes the transformer. ``model_index.json`` names
``KontextSpecialistPipeline``.

Exports of the first format (:data:`FIRST_FORMAT`) still load: base components copied
("components": "copy") or loaded from the base model id ("reference"), ``scheduler/``, and
``specialist/`` (the checkpoint's weights, a checkpoint folder) on the base 8-channel UNet
("adapter"), or a merged 12-channel ``unet/`` and ``style_module.safetensors`` ("merged").

The folder is written as ``<out>.tmp`` and renamed to ``<out>`` when complete
(:func:`editspecialists.writing.write_folder`). A folder with any mark of an export
(:func:`export_marks`) but no ``editspecialist.json`` is refused (:func:`refuse_incomplete_export`),
never loaded as the base model it would otherwise look like.
"""

from __future__ import annotations

import json
from pathlib import Path

from editspecialists.diffusion.policy import VISUAL_PROMPT_CHANNELS
from editspecialists.formats import checkpoint as ckpt

METADATA = "editspecialist.json"
MODEL_CARD = "README.md"
STYLE_MODULE = "style_module"  # the component's folder
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE


def input_layer_file(backbone: str, layer: str) -> str:
    """A compact adapter export's file of the backbone's trained input layer."""
    return f"{backbone}_{layer}.safetensors"


CONV_IN = input_layer_file("unet", "conv_in")  # InstructPix2Pix's
X_EMBEDDER = input_layer_file("transformer", "x_embedder")  # FLUX.1 Kontext's
COMPONENTS = ("copy", "reference")
FORMAT = "editspecialists-export-2"
FIRST_FORMAT = "editspecialists-export-1"
FIRST_FORMAT_SPECIALIST = "specialist"  # first format: the adapter export's checkpoint folder
FIRST_FORMAT_STYLE_MODULE = "style_module.safetensors"  # first format: the merged export's style module
UNETS = ("adapter", "merged")
REQUIRED_KEYS = {FORMAT: ("base", "unet", "scheduler"),
                 FIRST_FORMAT: ("base", "components", "unet", "scheduler", "architecture")}
MODEL_CARD_TITLE = "# EditSpecialist:"  # the first line of every model card we write
SPECIALIST_UNET_CHANNELS = 8 + VISUAL_PROMPT_CHANNELS  # InstructPix2Pix's 8 and the visual prompt's
SPECIALIST_TRANSFORMER_FEATURES = 2 * 64  # FLUX Kontext's packed latents and as many packed style channels


class ExportError(ValueError):
    """An exported folder that cannot be used (missing, changed or corrupt file); names the file."""


def is_export(path: Path) -> bool:
    return (Path(path) / METADATA).is_file()


def export_marks(folder: Path) -> list[str]:
    """What in ``folder`` belongs to an export only: hashes.json, style_module/, the LoRA file (or the
    first format's specialist/ and style_module.safetensors), our model card, a UNet with the
    specialist's 12 input channels."""
    folder = Path(folder)
    names = (ckpt.HASHES, STYLE_MODULE, LORA_WEIGHTS, CONV_IN, X_EMBEDDER, FIRST_FORMAT_SPECIALIST,
             FIRST_FORMAT_STYLE_MODULE)
    marks = [name for name in names if (folder / name).exists()]
    card = folder / MODEL_CARD
    if card.is_file() and card.read_text(errors="replace").startswith(MODEL_CARD_TITLE):
        marks.append(f"{MODEL_CARD} (its model card)")
    for backbone, inputs in (("unet", SPECIALIST_UNET_CHANNELS), ("transformer", SPECIALIST_TRANSFORMER_FEATURES)):
        if backbone_inputs(folder / backbone) == inputs:
            marks.append(f"{backbone}/ with {inputs} input channels")
    return marks


def backbone_inputs(folder: Path) -> int | None:
    """The ``in_channels`` of the model config in ``folder`` (None without a readable one)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config.get("in_channels") if isinstance(config, dict) else None


def refuse_incomplete_export(path: str | Path) -> None:
    """Raise :class:`ExportError` for a folder that carries marks of an export (:func:`export_marks`)
    but not its ``editspecialist.json``: an export stopped part-way or copied in part, which must
    not pass for the base model."""
    folder = Path(str(path)).expanduser()
    is_checkpoint_or_run = (folder / ckpt.WEIGHTS).is_file() or (folder / ckpt.CHECKPOINTS).is_dir()
    if not folder.is_dir() or is_export(folder) or is_checkpoint_or_run:
        return
    marks = export_marks(folder)
    if marks:
        raise ExportError(f"{folder} is an incomplete export: it has {', '.join(marks)} but no {METADATA} (written "
                          f"last, when an export is complete); export the specialist again")


def read_metadata(folder: Path) -> dict:
    """The parsed ``editspecialist.json`` of an exported folder (this format or the first); an error
    naming it if unusable."""
    path = Path(folder) / METADATA
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ExportError(f"{path} is unreadable ({error.__class__.__name__}: {error})") from error
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found not in REQUIRED_KEYS:
        raise ExportError(f"{path} is not an export of this version (format {found!r}, expected {FORMAT!r} or "
                          f"{FIRST_FORMAT!r}): export the specialist again from its checkpoint")
    missing = [key for key in REQUIRED_KEYS[found] if key not in metadata]
    unknown_components = metadata.get("components", "copy") not in COMPONENTS
    if missing or metadata["unet"] not in UNETS or unknown_components:
        raise ExportError(f"{path} lacks {missing} or has an unknown components/unet value: not a complete export")
    return metadata


def verify_export(folder: Path) -> None:
    """Check every file listed in the folder's hashes.json (size, then SHA-256); raises
    :class:`ExportError` naming the first file missing or changed since the export."""
    folder = Path(folder)
    try:
        record = ckpt.recorded_hashes(folder)
        if record is None:
            raise ExportError(f"{folder / ckpt.HASHES} is missing: the export is incomplete or was damaged")
        ckpt.verify_files(folder, record, record)
    except ckpt.CheckpointError as error:
        raise ExportError(str(error)) from error


def check_output_folder(folder: Path, overwrite: bool) -> None:
    """Refuse an export to ``folder`` if it is a file, or holds anything and not ``overwrite``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ExportError(f"{folder} is not empty: choose an empty or new folder, or overwrite=True "
                          f"(--overwrite) to replace its contents")


def write_metadata(folder: Path, metadata: dict) -> None:
    """Record the hashes of everything written so far, then the metadata (last: the export is
    complete once it exists)."""
    ckpt.record_hashes(folder)
    (folder / METADATA).write_text(json.dumps({"format": FORMAT, **metadata}, indent=1))
