"""The model card (README.md) of an exported specialist, from its metadata."""

from __future__ import annotations

import json

from editspecialists.diffusion.pipeline import FAMILY_NAMES, FLUX_KONTEXT, INSTRUCT_PIX2PIX
from editspecialists.formats.export import input_layer_file

# What the visual prompt does to each editor's denoising network (docs/method.md §2, §13).
ARCHITECTURES = {
    INSTRUCT_PIX2PIX: "the UNet takes 12 input channels (noisy latent, input image, and a style channel from a "
                      "cross-attention module over the style image and the prompt)",
    FLUX_KONTEXT: "the transformer's input projection takes the packed latents with 16 style channels from a "
                  "cross-attention module over the style image and the prompt (FLUX.1 Kontext's context-image "
                  "tokens as in the base pipeline)",
}
# The registered name of each editor's denoising network.
BACKBONES = {INSTRUCT_PIX2PIX: "unet", FLUX_KONTEXT: "transformer"}


def model_card(info: dict) -> str:
    """Markdown: what the specialist does, how it was trained, how to load and use it."""
    base = info["base"]
    family = info.get("family", INSTRUCT_PIX2PIX)
    editor, backbone = FAMILY_NAMES[family], BACKBONES[family]
    compact = info.get("components") == "reference"
    what = (f'Turns the **{info["input_name"]}** of a photo into **{info["style_name"]}**, guided by a photo of '
            f'{info["style_name"]} (the visual prompt) and the instruction '
            f'"turn the {info["input_name"]} into {info["style_name"]}".'
            if info.get("input_name") else f"The untrained visual-prompt model: edits as the base {editor}.")
    lines = [
        f"# EditSpecialist: {info.get('input_name') or 'base'} → {info.get('style_name') or 'base'}",
        "",
        what,
        "",
        f"An editing specialist of {editor}, trained by online reinforcement learning from AI feedback "
        "(EditSpecialists, after *Image-Editing Specialists: An RLAIF Approach for Diffusion Models*, "
        f"Benarous, Du, Yang, 2025): {ARCHITECTURES[family]}.",
        "",
        "## Model",
        "",
        f"- base model: `{base['model']}` (revision `{base['revision']}`), "
        + ("its VAE, text encoder(s) and tokenizer(s) loaded from that id (not stored here)" if compact
           else "its components copied into this folder"),
        f"- {backbone}: " + backbone_line(backbone, info["unet"], compact),
        f"- sampler: `{info['scheduler']}`; trained at {info.get('resolution') or 'an unknown'} px",
        f"- exported with editspecialists {info['method_version']}",
    ]
    source = info.get("source")
    if source:
        trainer = source.get("trainer") or {}
        lines += [f"- from checkpoint `{source['checkpoint']}` (epoch {trainer.get('epoch', '?')}, "
                  f"{trainer.get('global_step', '?')} optimizer steps; weights SHA-256 `{source['weights_sha256']}`)"]
    if info.get("training"):
        lines += ["", "## Training (summary of the run's config)", "", "```json",
                  json.dumps(info["training"], indent=1), "```"]
    steps = (info.get("defaults") or {}).get("num_inference_steps", 100)
    lines += [
        "", "## Use", "",
        "```python",
        "from PIL import Image",
        "from editspecialists import EditSpecialistPipeline",
        "",
        'pipe = EditSpecialistPipeline.from_pretrained("<this folder>")',
        'edit = pipe(Image.open("input.jpg"), Image.open("style.jpg"), '
        f'num_inference_steps={steps}, generator=0).images[0]',
        "```",
        "",
        *([] if compact else in_diffusers(backbone, info["unet"])),
        "The edit has the input's size (the model works at most at the training resolution on the longer "
        "side, `max_side`, then resizes back). Compare with the base model in the app: "
        "`python scripts/app.py --model <this folder>`.",
        "",
    ]
    return "\n".join(lines)


def backbone_line(backbone: str, form: str, compact: bool) -> str:
    """What the export holds of the denoising network ``backbone`` ("unet" or "transformer") in
    ``form`` ("merged" or "adapter")."""
    if form == "merged":
        return f"`{backbone}/`, the LoRA fused into the weights"
    lora = "the LoRA in diffusers' format (`pytorch_lora_weights.safetensors`)"
    layer = {"unet": "conv_in", "transformer": "x_embedder"}[backbone]
    if compact:
        return f"the base model's, with the trained {layer} (`{input_layer_file(backbone, layer)}`) and {lora}"
    return f"`{backbone}/`, the base weights and the trained {layer}; {lora}"


def in_diffusers(backbone: str, form: str) -> list[str]:
    """The model card's lines on loading a (copy) export in diffusers alone."""
    return [
        "In diffusers alone (a `DiffusionPipeline` folder; the hashes are then not checked):",
        "",
        "```python",
        "import editspecialists.specialist.pipeline  # names the pipeline classes and the style module to diffusers",
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("<this folder>")',
        *([f'pipe.load_lora_weights("<this folder>")  # the LoRA onto pipe.{backbone}'] if form == "adapter" else []),
        "```",
        "",
    ]
