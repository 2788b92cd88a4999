"""Editing a folder of images with a trained specialist (or the base model): generate.py.

Each readable input gets one edit, written as ``<sample_savedir>/<input>_<style>/edit_<input file
name>`` in the input's own format (``sample.edit_format`` "input", the original's: a .jpg input
gives a JPEG edit at Pillow's default quality) or ``edit_<input stem>.png`` ("png", lossless), and
a line in ``manifest.jsonl``: input file, style file, prompt template index and prompt, seed, edit
file, and the model (:func:`model_record`). Unreadable inputs and styles are skipped as training
skips them (one warning names them). On CUDA the VAE, the UNet and the style module run under
fp16 autocast, as the original's generate.py (``sample.generation_autocast``; the sampler's steps
stay fp32; a FLUX.1 Kontext specialist's under bf16, as FLUX overflows fp16); on the CPU
everything runs in fp32. A specialist of either editor family edits here (its pipeline class:
:data:`~editspecialists.specialist.pipeline.SPECIALIST_PIPELINES`).

Each batch is edited by :meth:`EditSpecialistPipeline.edit_tensors
<editspecialists.specialist.pipeline.EditSpecialistPipeline.edit_tensors>`, so the pipeline gives
generate.py's pixels for the same image, prompt and seed (at batch size 1).

Every image has its own seed, which draws its style image, (``sample.generation_prompt``
"per_image") its prompt template, and its noise (:mod:`editspecialists.data.edit_plan`, shared
with training's held-out validation): with the same seed and the same batches an edit
is reproduced exactly (on one machine and thread count). Other batches (another
``sample.batch_size``, a rerun that redoes only some edits) can move a few pixels by 1/255, because
batched convolutions round differently (measured on the demo, batch size 1 against 4 on a CPU: 2-3
of 8 edits, at 1-2 of their 3072 values).

Safe to stop at any moment: each edit is written under a temporary name and renamed when
complete, and the manifest (written aside and renamed after each batch) records what is done. An
edit counts as done only when the manifest lists it and its file decodes; anything else is redone,
with one line naming it. Edits of another model in the folder are refused unless ``overwrite``.
SIGTERM or SIGINT finishes the current batch (its edits and the manifest), then stops
(:class:`~editspecialists.stopping.Stopped`); a failed write (a full disk) removes the batch's
temporary file and stops with one message naming the folder, the space needed and free
(:func:`~editspecialists.writing.write_failure`). Either way the same command goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from editspecialists import writing
from editspecialists.command_line import command_with
from editspecialists.config_checks import validate_generation_config
from editspecialists.data.edit_plan import edit_name, plan_edits
from editspecialists.data.images import UnreadableImageError, load_image, read_rgb, readable_images, tensor_to_image
from editspecialists.data.manifest import (EDIT_PREFIX, MANIFEST, TEMPORARY_SUFFIX, read_manifest,
                                          write_manifest, write_then_rename)
from editspecialists.diffusion.bundle import EditModelSpec
from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.pipeline import use_xformers_attention
from editspecialists.diffusion.sampler import sampling_eta
from editspecialists.precision import cuda_autocast
from editspecialists.formats import export
from editspecialists.specialist.pipeline import EditSpecialistPipeline
from editspecialists.stopping import StopOnSignal, Stopped, signal_name
from editspecialists.formats import checkpoint as ckpt

logger = logging.getLogger(__name__)

# The keys of a model record that identify the model (its checkpoint path does not).
MODEL_IDENTITY = ("base", "revision", "weights_sha256")


def save_edit(image: Image.Image, path: Path, name: str) -> None:
    """Write ``image`` to ``path`` in the format of the edit file ``name``'s suffix (Pillow's default
    settings: JPEG at quality 75)."""
    image.save(path, format=Image.registered_extensions()[Path(name).suffix.lower()])


def output_folder(config) -> Path:
    return Path(config.sample.sample_savedir) / f"{config.input_name}_{config.style_name}"


def model_config(config):
    """The config that defines the model: the checkpoint's run config, else ``config`` itself."""
    if not config.load_checkpoint:
        return config
    export.refuse_incomplete_export(config.load_checkpoint)
    return ckpt.saved_run_config(ckpt.resolve_checkpoint(config.load_checkpoint))


def model_record(config) -> dict:
    """The manifest's record of the model ``config`` edits with: ``{"base": pretrained.model,
    "revision": pretrained.revision, "checkpoint": checkpoint folder or None, "weights_sha256": SHA-256
    of its weights file or None}`` (the base model's values from the checkpoint's run config)."""
    trained = model_config(config)
    checkpoint = ckpt.resolve_checkpoint(config.load_checkpoint).resolve() if config.load_checkpoint else None
    return {"base": trained.pretrained.model, "revision": trained.pretrained.revision,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "weights_sha256": ckpt.weights_sha256(checkpoint) if checkpoint else None}


def describe_model(model: dict | None) -> str:
    """A model record in words (None: an edit made before manifests recorded the model)."""
    if model is None:
        return "an unrecorded model (edits made before manifest.jsonl recorded the model)"
    base = f"{model['base']} (revision {model['revision']})"
    if not model.get("checkpoint"):
        return f"{base} without a checkpoint"
    return f"{base} with checkpoint {model['checkpoint']} (weights sha256 {model['weights_sha256'][:16]})"


def same_model(recorded: dict | None, model: dict) -> bool:
    return recorded is not None and all(recorded.get(key) == model[key] for key in MODEL_IDENTITY)


def check_one_model(folder: Path, manifest: dict[str, dict], model: dict) -> None:
    """Refuse to add edits of ``model`` to a folder whose manifest lists edits of another model."""
    others = []
    for entry in manifest.values():
        if not same_model(entry.get("model"), model) and entry.get("model") not in others:
            others.append(entry.get("model"))
    if others:
        raise ValueError(f"{folder} holds edits of {' and '.join(map(describe_model, others))}; this run edits "
                         f"with {describe_model(model)}. Set --config.overwrite=True to replace them, or "
                         f"another sample.sample_savedir")


def load_editor(config, device) -> EditSpecialistPipeline:
    """The specialist of ``config.load_checkpoint`` (else the base model ``pretrained.model``) on
    ``device`` in fp32, as the pipeline of its family, sampling with ``pretrained.scheduler``
    (xformers attention with ``use_xformers``), without its per-batch progress bar (generate.py
    shows one over the batches)."""
    if config.load_checkpoint:
        editor = EditSpecialistPipeline.from_checkpoint(config.load_checkpoint, scheduler=config.pretrained.scheduler)
    else:
        editor = EditSpecialistPipeline.untrained(EditModelSpec.from_config(config))
    if config.use_xformers:
        use_xformers_attention(editor.backbone, editor.vae)
    editor.set_progress_bar_config(disable=True)
    return editor.to(device)


def planned_edits(config, input_files: Sequence[str] | None = None, seeds_per_input: int = 1) -> list[dict]:
    """Manifest entries (without the model) of the edits of every readable input image, or of
    ``input_files`` (names in ``config.inputimg_dir``), ``seeds_per_input`` each, named after
    ``sample.edit_format`` (:func:`editspecialists.data.edit_plan.plan_edits`)."""
    wanted = None if input_files is None else set(input_files).__contains__
    inputs = readable_images(config.inputimg_dir, "input image", wanted, key="inputimg_dir")
    check_distinct_edit_names(inputs, config.sample.edit_format)
    styles = readable_images(config.styleimg_dir, "style image", key="styleimg_dir")
    return plan_edits(config.seed, [path.name for path in inputs], [path.name for path in styles],
                      config.input_name, config.style_name, config.sample.generation_prompt, seeds_per_input,
                      config.sample.edit_format)


def edits_to_make(planned: list[dict], folder: Path, manifest: dict[str, dict]) -> list[dict]:
    """The ``planned`` edits not done yet: done means listed in ``manifest`` and decoding as an image.
    Each edit file redone for another reason than being absent is named in one warning line."""
    todo = []
    for entry in planned:
        path = folder / entry["edit"]
        reason = undone_reason(path, listed=entry["edit"] in manifest)
        if reason is not None:
            todo.append(entry)
            if reason:
                logger.warning("redoing %s: %s", path, reason)
    return todo


def undone_reason(path: Path, listed: bool) -> str | None:
    """None if the edit at ``path`` is done, else why not ("" when it was simply never made)."""
    if not path.is_file():
        return f"listed in {MANIFEST} but missing" if listed else ""
    if not listed:
        return f"not listed in {MANIFEST} (left by an interrupted run)"
    try:
        read_rgb(path)
    except UnreadableImageError as error:
        return f"unreadable ({error.reason})"
    return None


def check_distinct_edit_names(inputs: list[Path], edit_format: str) -> None:
    """Refuse inputs whose edits would share a file (``car.jpg`` and ``car.png`` in "png")."""
    by_edit: dict[str, list[str]] = {}
    for path in inputs:
        by_edit.setdefault(edit_name(path.name, edit_format=edit_format), []).append(path.name)
    clashes = [" and ".join(names) for names in by_edit.values() if len(names) > 1]
    if clashes:
        raise ValueError(f"input files {'; '.join(clashes)} in {inputs[0].parent} would be written to "
                         f"the same edit file: rename one of each")


def check_same_edit_names(folder: Path, manifest: dict[str, dict], planned: list[dict]) -> None:
    """Refuse to add edits to a folder whose manifest lists an edit of a planned input in another
    file format (another ``sample.edit_format``): evaluation would score both."""
    planned_suffix = {entry["input"]: Path(entry["edit"]).suffix for entry in planned}
    others = sorted(f"{name} of {entry['input']}" for name, entry in manifest.items()
                    if Path(name).suffix != planned_suffix.get(entry["input"], Path(name).suffix))
    if others:
        raise ValueError(f"{folder} holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}, written "
                         f"with another sample.edit_format: set the same edit_format, --config.overwrite=True "
                         f"to replace them, or another sample.sample_savedir")


def generate_edits(config, input_files: Sequence[str] | None = None, seeds_per_input: int = 1) -> Path:
    """Edit every readable input image of ``config.inputimg_dir`` (or those named in
    ``input_files``), ``seeds_per_input`` times each; returns the output folder.

    Edits already done by the same model are kept; ``config.overwrite`` redoes every edit and
    starts a new manifest.
    """
    validate_generation_config(config, model_config(config))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    planned = planned_edits(config, input_files, seeds_per_input)
    folder = output_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    remove_temporary_files(folder)
    model = model_record(config)
    manifest = {} if config.overwrite else read_manifest(folder)
    check_one_model(folder, manifest, model)
    check_same_edit_names(folder, manifest, planned)
    todo = edits_to_make(planned, folder, manifest)
    if not todo:
        print(f"all edits already exist in {folder} (--config.overwrite=True redoes them)")
        return folder
    editor = load_editor(config, device)
    scales = GuidanceScales.from_config(config.sample)
    size = config.data_resize
    with StopOnSignal("finishing the current batch of edits, then stopping") as stop:
        for start in tqdm(range(0, len(todo), config.sample.batch_size), desc="editing"):
            if stop.requested():
                raise Stopped(f"stopped by {signal_name(stop.signum)}: {start} of the {len(todo)} edits to make "
                              f"are in {folder}. Make the rest with: {command_with({})}", stop.signum)
            chunk = todo[start:start + config.sample.batch_size]
            inputs = torch.stack([load_image(Path(config.inputimg_dir) / e["input"], size, config.resize_filter)
                                  for e in chunk])
            styles = torch.stack([load_image(Path(config.styleimg_dir) / e["style"], size, config.resize_filter)
                                  for e in chunk])
            with cuda_autocast(config.sample.generation_autocast, device, editor.generation_autocast_dtype):
                edits = editor.edit_tensors(inputs, styles, [e["prompt"] for e in chunk],
                                            [editor.generator(e["seed"]) for e in chunk],
                                            num_inference_steps=config.sample.num_steps, scales=scales,
                                            eta=sampling_eta(config.sample),
                                            research_code_compat=config.research_code_compat)[:, 0]
            try:
                for entry, edit in zip(chunk, edits):
                    image = tensor_to_image(edit)
                    write_then_rename(folder / entry["edit"], lambda tmp: save_edit(image, tmp, entry["edit"]))
                    manifest[entry["edit"]] = {**entry, "model": model}
                write_manifest(folder, manifest)
            except writing.WRITE_ERRORS as error:
                remove_temporary_files(folder)
                raise writing.write_failure(folder, "edits to", writing.failure_reason(error),
                                            remaining_bytes(folder, manifest, len(todo) - start, size),
                                            f"The edits listed in its {MANIFEST} are complete. Free some space, "
                                            f"then make the rest with: {command_with({})}") from error
    return folder


def remaining_bytes(folder: Path, manifest: dict[str, dict], count: int, size: int) -> int:
    """About the bytes ``count`` more edits take: the mean size of the edits in ``folder``'s manifest
    (uncompressed RGB at ``size`` when there are none)."""
    sizes = [(folder / name).stat().st_size for name in manifest if (folder / name).is_file()]
    return count * (round(sum(sizes) / len(sizes)) if sizes else 3 * size * size)


def remove_temporary_files(folder: Path) -> None:
    """Delete the temporary edit and manifest files an interrupted run left in ``folder``."""
    leftovers = sorted(p for p in folder.glob(f"*{TEMPORARY_SUFFIX}")
                       if p.name.startswith(EDIT_PREFIX) or p.name == MANIFEST + TEMPORARY_SUFFIX)
    for path in leftovers:
        path.unlink()
    if leftovers:
        logger.info("removed temporary files of an interrupted run: %s", ", ".join(p.name for p in leftovers))
