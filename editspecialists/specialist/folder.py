"""The exported specialist folder: its layout, metadata and checks.

Layout (``EditSpecialistPipeline.save_pretrained`` writes it, ``from_pretrained`` reads it)::

    <out>/editspecialist.json   metadata (:func:`read_metadata`), written last: a folder without it
                                is not a complete export
    <out>/README.md             model card (written first: even a partial export is marked as one)
    <out>/hashes.json           size and SHA-256 of every other file (checked when loading)
    <out>/scheduler/            the sampler's config (the family the specialist was trained with)
    <out>/model_index.json, vae/, text_encoder/, tokenizer/, unet/
                                the base pipeline's components ("components": "copy"); with
                                "reference" they are loaded from the base model id and revision
    adapter export ("unet": "adapter"): unet/ is the base 8-channel UNet (when copied) and
    <out>/specialist/           weights.safetensors (LoRA, widened conv_in, style module: the
                                checkpoint's weights), trainer.json, hashes.json: a checkpoint
                                folder, loaded by the training code's own checks
    merged export ("unet": "merged"): unet/ is the 12-channel UNet with LoRA merged (always
                                written) and style_module.safetensors the style module

The folder is written as ``<out>.tmp`` and renamed to ``<out>`` when complete
(:func:`editspecialists.writing.write_folder`). A folder with any mark of an export
(:func:`export_marks`) but no ``editspecialist.json`` is refused (:func:`refuse_incomplete_export`),
never loaded as the base model it would otherwise look like.
"""

from __future__ import annotations

import json
from pathlib import Path

from editspecialists.diffusion.policy import VISUAL_PROMPT_CHANNELS
from editspecialists.training import checkpoint as ckpt

METADATA = "editspecialist.json"
MODEL_CARD = "README.md"
SPECIALIST = "specialist"
STYLE_MODULE = "style_module.safetensors"
FORMAT = "editspecialists-export-1"
COMPONENTS = ("copy", "reference")
UNETS = ("adapter", "merged")
REQUIRED_KEYS = ("base", "components", "unet", "scheduler", "architecture")
MODEL_CARD_TITLE = "# EditSpecialist:"  # the first line of every model card we write
SPECIALIST_UNET_CHANNELS = 8 + VISUAL_PROMPT_CHANNELS  # InstructPix2Pix's 8 and the visual prompt's


class ExportError(ValueError):
    """An exported folder that cannot be used (missing, changed or corrupt file); names the file."""


def is_export(path: Path) -> bool:
    return (Path(path) / METADATA).is_file()


def export_marks(folder: Path) -> list[str]:
    """What in ``folder`` belongs to an export only: hashes.json, specialist/, style_module.safetensors,
    our model card, a UNet with the specialist's 12 input channels."""
    folder = Path(folder)
    marks = [name for name in (ckpt.HASHES, SPECIALIST, STYLE_MODULE) if (folder / name).exists()]
    card = folder / MODEL_CARD
    if card.is_file() and card.read_text(errors="replace").startswith(MODEL_CARD_TITLE):
        marks.append(f"{MODEL_CARD} (its model card)")
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        unet = {}
    if isinstance(unet, dict) and unet.get("in_channels") == SPECIALIST_UNET_CHANNELS:
        marks.append(f"unet/ with {SPECIALIST_UNET_CHANNELS} input channels")
    return marks


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
    """The parsed ``editspecialist.json`` of an exported folder; an error naming it if unusable."""
    path = Path(folder) / METADATA
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ExportError(f"{path} is unreadable ({error.__class__.__name__}: {error})") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ExportError(f"{path} is not an export of this version (format {found!r}, expected {FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing or metadata["components"] not in COMPONENTS or metadata["unet"] not in UNETS:
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
