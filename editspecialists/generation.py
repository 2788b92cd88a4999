"""Editing a folder of images with a trained specialist (or the base model): generate.py.

Each input gets one edit, written as ``<sample_savedir>/<input>_<style>/edit_<input stem>.png``,
and a line in ``manifest.jsonl`` (input file, style file, prompt template index and prompt, seed,
edit file) from which the edit can be reproduced exactly: every image has its own seed,
independent of batching, which draws its style image and (``sample.generation_prompt``
"per_image") its prompt template.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from editspecialists.data.dataset import PROMPT_TEMPLATES
from editspecialists.data.images import list_images, load_image, tensor_to_image
from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.pipeline import encode_images, encode_prompts, load_pipeline, place_encoders
from editspecialists.diffusion.policy import policy_from_config
from editspecialists.diffusion.sampler import sample_edits
from editspecialists.training import checkpoint as ckpt

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"


def edit_name(input_file: str) -> str:
    """``edit_<input stem>.png``: edits are written losslessly whatever the input's format."""
    return f"edit_{Path(input_file).stem}.png"


def output_folder(config) -> Path:
    return Path(config.sample.sample_savedir) / f"{config.input_name}_{config.style_name}"


def image_seed(seed: int, input_file: str) -> int:
    """A per-image seed from the run seed and the file name (stable across folders/batches)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(input_file.encode())]).generate_state(1)[0])


def model_config(config):
    """The config that defines the model: the checkpoint's run config, else ``config`` itself."""
    if not config.load_checkpoint:
        return config
    return ckpt.saved_run_config(ckpt.resolve_checkpoint(config.load_checkpoint))


def load_editor(config, device):
    """(pipeline parts, policy) with the checkpoint of ``config.load_checkpoint`` applied."""
    trained = model_config(config)
    pipe = load_pipeline(trained.pretrained.model, revision=trained.pretrained.revision,
                         scheduler=config.pretrained.scheduler)
    policy = policy_from_config(pipe.unet, trained)
    if config.load_checkpoint:
        checkpoint = ckpt.resolve_checkpoint(config.load_checkpoint)
        ckpt.load_weights(policy, checkpoint, ckpt.architecture_of(trained))
        logger.info("loaded %s", checkpoint)
    else:
        print("No load_checkpoint given: editing with the base InstructPix2Pix model "
              "(visual-prompt modules at their initial, identity state).")
    place_encoders(pipe, device)
    return pipe, policy.to(device).eval()


def read_manifest(folder: Path) -> dict[str, dict]:
    """``{edit file name: manifest entry}`` of the edits already in ``folder``."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    with open(path) as handle:
        return {entry["edit"]: entry for entry in map(json.loads, filter(str.strip, handle))}


def plan_edits(config, folder: Path) -> list[dict]:
    """Manifest entries of the edits still to make (all of them with ``overwrite``)."""
    inputs = list_images(config.inputimg_dir, "input image")
    check_distinct_edit_names(inputs)
    styles = list_images(config.styleimg_dir, "style image")
    entries = []
    for path in inputs:
        seed = image_seed(config.seed, path.name)
        rng = np.random.default_rng(seed)
        style = styles[rng.integers(len(styles))]
        template = prompt_template(config.sample.generation_prompt, rng)
        prompt = PROMPT_TEMPLATES[template].format(input=config.input_name, style=config.style_name)
        entry = {"input": path.name, "style": style.name, "template": template, "prompt": prompt,
                 "seed": seed, "edit": edit_name(path.name)}
        if config.overwrite or not (folder / entry["edit"]).is_file():
            entries.append(entry)
    return entries


def prompt_template(choice: str, rng: np.random.Generator) -> int:
    """Index into ``PROMPT_TEMPLATES`` of one image's instruction: drawn from the image's ``rng``
    (``"per_image"``, the original's way) or always 0 (``"first"``)."""
    if choice == "per_image":
        return int(rng.integers(len(PROMPT_TEMPLATES)))
    if choice == "first":
        return 0
    raise ValueError(f"sample.generation_prompt must be 'per_image' or 'first', got {choice!r}")


def check_distinct_edit_names(inputs: list[Path]) -> None:
    """Refuse inputs whose edits would share a file (``car.jpg`` and ``car.png``)."""
    by_edit: dict[str, list[str]] = {}
    for path in inputs:
        by_edit.setdefault(edit_name(path.name), []).append(path.name)
    clashes = [" and ".join(names) for names in by_edit.values() if len(names) > 1]
    if clashes:
        raise ValueError(f"input files {'; '.join(clashes)} in {inputs[0].parent} would be written to "
                         f"the same edit file: rename one of each")


def generate_edits(config) -> Path:
    """Edit every input image of ``config.inputimg_dir``; returns the output folder."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = output_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    todo = plan_edits(config, folder)
    manifest = read_manifest(folder)
    if not todo:
        print(f"all edits already exist in {folder} (--config.overwrite=True redoes them)")
        return folder
    pipe, policy = load_editor(config, device)
    pipe.scheduler.set_timesteps(config.sample.num_steps, device=device)
    scales = GuidanceScales(config.sample.guidance_scale, config.sample.image_guidance_scale,
                            config.sample.style_image_guidance_scale)
    empty = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    size = config.data_resize
    for start in tqdm(range(0, len(todo), config.sample.batch_size), desc="editing"):
        chunk = todo[start:start + config.sample.batch_size]
        inputs = torch.stack([load_image(Path(config.inputimg_dir) / e["input"], size) for e in chunk]).to(device)
        styles = torch.stack([load_image(Path(config.styleimg_dir) / e["style"], size) for e in chunk]).to(device)
        cond = EditConditioning(encode_images(pipe.vae, inputs), encode_images(pipe.vae, styles),
                                encode_prompts(pipe.tokenizer, pipe.text_encoder, [e["prompt"] for e in chunk]),
                                empty)
        generators = [torch.Generator(device).manual_seed(e["seed"]) for e in chunk]
        edits = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=1, scales=scales,
                             eta=config.sample.eta, generator=generators).images[:, 0]
        for entry, edit in zip(chunk, edits):
            tensor_to_image(edit).save(folder / entry["edit"])
            manifest[entry["edit"]] = entry
        write_manifest(folder, manifest)
    return folder


def write_manifest(folder: Path, manifest: dict[str, dict]) -> None:
    """Replace ``folder``'s manifest by ``manifest`` (written aside, then renamed)."""
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text("".join(json.dumps(entry) + "\n" for entry in manifest.values()))
    tmp.replace(folder / MANIFEST)
