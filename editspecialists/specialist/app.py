"""The editing app (``scripts/app.py``): a Gradio page showing the specialist's edit beside the base
editor's (InstructPix2Pix's or FLUX.1 Kontext's) edit for the same seed. Needs the ``app`` extra
(``pip install -e '.[app]'``)."""

from __future__ import annotations

import logging
import inspect
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from editspecialists.data.images import read_rgb
from editspecialists.diffusion.pipeline import FAMILY_NAMES, INSTRUCT_PIX2PIX
from editspecialists.specialist.base import check_seed, spec_of
from editspecialists.specialist.pipeline import EditSpecialistPipeline
from editspecialists.formats import checkpoint as ckpt

logger = logging.getLogger(__name__)

MAX_STYLE_IMAGES = 5
# Uploads are downsized when read so that their longer side is at most this many pixels (the edits
# are returned at that size): memory stays bounded whatever the upload's size.
APP_MAX_SIDE = 2048
DEMO_RUNS = "logs/demo_brightness"  # where the demo training (config/demo.py:brightness) writes its runs
DEMO_STEPS = 10  # config/demo.py's sample.num_steps
SPECIALIST_LABEL = "specialist"


def base_label(info: dict) -> str:
    """The base pane's label: "base" and the editor's name."""
    return f"base {FAMILY_NAMES[info.get('family', INSTRUCT_PIX2PIX)]}"


def demo_model(runs: str | Path = DEMO_RUNS) -> str:
    """The newest demo run under ``runs`` that has a checkpoint that verifies, else the demo editor
    (built in the cache if missing: the untrained demo model). Trains nothing."""
    from editspecialists.demo.assets import demo_paths, ensure_demo_assets

    folders = sorted((p for p in Path(runs).glob("*") if ckpt.list_checkpoints(p)), key=lambda p: p.stat().st_mtime)
    for run in reversed(folders):
        try:
            ckpt.resolve_checkpoint(run)
        except (ValueError, OSError) as error:
            logger.warning("demo: skipping %s (%s)", run, error)
            continue
        return str(run)
    logger.info("app: no demo run with a checkpoint under %s: the untrained demo editor", runs)
    ensure_demo_assets()
    return demo_paths()["policy"]


def load_models(model: str, device=None) -> tuple[EditSpecialistPipeline, EditSpecialistPipeline | None]:
    """(the specialist, the base pipeline when the specialist cannot run its own base: an export);
    ``model`` is what ``from_pretrained`` takes, or ``demo``."""
    from editspecialists.demo.scenes import DEMO_RESOLUTION

    is_demo = model == "demo"
    source = demo_model() if is_demo else model
    logger.info("app: loading the specialist %s%s ...", source, " (--model demo)" if is_demo else "")
    specialist = EditSpecialistPipeline.from_pretrained(source, device=device)
    if is_demo:  # the untrained demo editor records no names, resolution nor steps
        for key, value in {"input_name": "car", "style_name": "lego", "resolution": DEMO_RESOLUTION}.items():
            specialist.info[key] = specialist.info.get(key) or value
        specialist.info["defaults"] = {"num_inference_steps": DEMO_STEPS, **(specialist.info.get("defaults") or {})}
    if specialist.policy is not None:  # its frozen reference is the base model
        return specialist, None
    base = specialist.info["base"]
    logger.info("app: loading the base model %s (revision %s) for the edits beside the specialist's ...",
                base["model"], base["revision"])
    spec = replace(spec_of(specialist.info), use_lora=True)  # untrained: LoRA off is the base, no backbone copy
    return specialist, EditSpecialistPipeline.untrained(spec, warn=False).to(specialist.device)


def edit_pair(specialist: EditSpecialistPipeline, base: EditSpecialistPipeline | None, image, style_files,
              input_name: str, style_name: str, prompt: str, seed: int, steps: int):
    """(specialist's edit, base model's edit) of ``image`` (a file path) for the same seed and
    prompt; the style image is drawn from ``style_files`` with the seed. Every upload is checked
    against ``data.images.MAX_IMAGE_PIXELS`` from its header and downsized to :data:`APP_MAX_SIDE`
    as it is read; bad input is a ValueError whose message the page shows."""
    if image is None or not 1 <= len(style_files or []) <= MAX_STYLE_IMAGES:
        raise ValueError(f"upload an input image and one to {MAX_STYLE_IMAGES} style images")
    seed = check_seed(seed)
    image = read_rgb(image, max_side=APP_MAX_SIDE)
    styles = [read_rgb(getattr(f, "name", f), max_side=APP_MAX_SIDE) for f in style_files]
    style = styles[np.random.default_rng(seed).integers(len(styles))]
    prompt = prompt.strip() or specialist.default_prompt(input_name.strip() or None, style_name.strip() or None)
    defaults = specialist.info.get("defaults") or {}
    accepted = inspect.signature(specialist.__call__).parameters  # a family's own guidance settings
    settings = {"num_inference_steps": int(steps), "generator": seed,
                **{key: value for key, value in defaults.items() if key in accepted and key != "num_inference_steps"}}
    edit = specialist(image, style, prompt, **settings).images[0]
    if base is None:
        with specialist.base_model():
            base_edit = specialist(image, style, prompt, **settings).images[0]
    else:
        base_edit = base(image, style, prompt, max_side=specialist.max_side, **settings).images[0]
    return edit, base_edit


def build_app(specialist: EditSpecialistPipeline, base: EditSpecialistPipeline | None = None,
              examples: tuple[str, list[str]] | None = None):
    """The Gradio Blocks page; ``examples``: (input image, style images) filled in, with their edits
    (seed 0) already shown."""
    import gradio as gr

    # Gradio opens uploads with Pillow, whose own size check would end a large upload in Gradio's
    # generic error; edit_pair checks the size from the header itself, with the limit in its message.
    Image.MAX_IMAGE_PIXELS = None
    info = specialist.info
    steps = (info.get("defaults") or {}).get("num_inference_steps", 100)

    def run(image, style_files, input_name, style_name, prompt, seed, num_steps):
        try:
            return edit_pair(specialist, base, image, style_files, input_name, style_name, prompt, seed, num_steps)
        except ValueError as error:  # bad input: the message on the page
            raise gr.Error(str(error)) from error

    if examples:
        logger.info("app: editing the example images (seed 0, %d steps) ...", steps)
    shown = run(examples[0], examples[1], "", "", "", 0, steps) if examples else (None, None)

    with gr.Blocks(title="EditSpecialists") as page:
        gr.Markdown(f"# EditSpecialists: {info.get('input_name') or 'base'} → {info.get('style_name') or 'base'}\n"
                    f"{'Trained specialist' if info.get('trained') else 'Untrained visual-prompt model'} on "
                    f"`{base_name(info['base']['model'])}`. Upload an input image and one to "
                    f"{MAX_STYLE_IMAGES} style images; the style image is drawn with the seed.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, label="input image",
                                 value=examples[0] if examples else None)
                style_files = gr.File(file_count="multiple", file_types=["image"], label="style images (1 to 5)",
                                      value=examples[1] if examples else None)
                with gr.Row():
                    input_name = gr.Textbox(value=info.get("input_name") or "", label="input name")
                    style_name = gr.Textbox(value=info.get("style_name") or "", label="style name")
                prompt = gr.Textbox(label="prompt (empty: \"turn the {input name} into {style name}\")")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="seed")
                    num_steps = gr.Slider(1, 200, value=steps, step=1, label="steps")
                button = gr.Button("Edit", variant="primary")
            specialist_edit = gr.Image(label=SPECIALIST_LABEL, format="png", value=shown[0])
            base_edit = gr.Image(label=base_label(info), format="png", value=shown[1])
        inputs = [image, style_files, input_name, style_name, prompt, seed, num_steps]
        button.click(run, inputs, [specialist_edit, base_edit], api_name="edit")
    return page


def base_name(model: str) -> str:
    """A hub id as is; a local folder by its name (the page does not show local paths)."""
    return Path(model).name if Path(model).is_dir() else model


def demo_examples() -> tuple[str, list[str]]:
    """A demo input image and the demo style images (the cache's demo images)."""
    from editspecialists.demo.assets import demo_paths
    from editspecialists.data.images import list_images

    paths = demo_paths()
    return str(list_images(paths["inputs"])[0]), [str(p) for p in list_images(paths["styles"])[:MAX_STYLE_IMAGES]]
