"""The model card (README.md) of an exported specialist, from its metadata."""

from __future__ import annotations

import json


def model_card(info: dict) -> str:
    """Markdown: what the specialist does, how it was trained, how to load and use it."""
    base = info["base"]
    compact = info.get("components") == "reference"
    what = (f'Turns the **{info["input_name"]}** of a photo into **{info["style_name"]}**, guided by a photo of '
            f'{info["style_name"]} (the visual prompt) and the instruction '
            f'"turn the {info["input_name"]} into {info["style_name"]}".'
            if info.get("input_name") else "The untrained visual-prompt model: edits as the base InstructPix2Pix.")
    lines = [
        f"# EditSpecialist: {info.get('input_name') or 'base'} → {info.get('style_name') or 'base'}",
        "",
        what,
        "",
        "An InstructPix2Pix editing specialist trained by online reinforcement learning from AI feedback "
        "(EditSpecialists, after *Image-Editing Specialists: An RLAIF Approach for Diffusion Models*, "
        "Benarous, Du, Yang, 2025): the UNet takes 12 input channels (noisy latent, input image, and a "
        "style channel from a cross-attention module over the style image and the prompt).",
        "",
        "## Model",
        "",
        f"- base model: `{base['model']}` (revision `{base['revision']}`), "
        + ("its VAE, text encoder and tokenizer loaded from that id (not stored here)" if compact
           else "its components copied into this folder"),
        "- UNet: " + unet_line(info["unet"], compact),
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
        *([] if compact else in_diffusers(info["unet"])),
        "The edit has the input's size (the model works at most at the training resolution on the longer "
        "side, `max_side`, then resizes back). Compare with the base model in the app: "
        "`python scripts/app.py --model <this folder>`.",
        "",
    ]
    return "\n".join(lines)


def unet_line(unet: str, compact: bool) -> str:
    """What the export holds of the UNet."""
    if unet == "merged":
        return "`unet/`, the LoRA fused into the weights"
    lora = "the LoRA in diffusers' format (`pytorch_lora_weights.safetensors`)"
    if compact:
        return f"the base model's, with the trained conv_in (`unet_conv_in.safetensors`) and {lora}"
    return f"`unet/`, the base weights and the trained conv_in; {lora}"


def in_diffusers(unet: str) -> list[str]:
    """The model card's lines on loading a (copy) export in diffusers alone."""
    return [
        "In diffusers alone (a `DiffusionPipeline` folder; the hashes are then not checked):",
        "",
        "```python",
        "import editspecialists.specialist.pipeline  # names the pipeline and style module classes to diffusers",
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("<this folder>")',
        *(['pipe.load_lora_weights("<this folder>")  # the LoRA onto pipe.unet'] if unet == "adapter" else []),
        "```",
        "",
    ]
