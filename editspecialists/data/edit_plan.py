"""What each edit of an input file is made with: its style image, instruction and noise seeds.

Shared by generate.py, the held-out validation of training and the base-vs-specialist
evaluation, so that all three edit an input with the same style image, prompt and seeds: the
edits of one model compare edit by edit with another's.

Every input file has its own seed (from the run seed and the file name, stable across folders
and batches). It draws the style image and, with ``generation_prompt="per_image"``, the prompt
template; it is also the noise seed of the input's first edit. Further edits of the same input
(``seeds_per_input`` > 1) keep the style image and prompt and take the seeds of the following
run seeds.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from editspecialists.data.dataset import GENERATION_PROMPTS, PROMPT_TEMPLATES
from editspecialists.data.manifest import EDIT_FORMATS, EDIT_PREFIX


def image_seed(seed: int, input_file: str) -> int:
    """A per-image seed from the run seed and the file name (stable across folders/batches)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(input_file.encode())]).generate_state(1)[0])


def prompt_template(choice: str, rng: np.random.Generator) -> int:
    """Index into ``PROMPT_TEMPLATES`` of one image's instruction: drawn from the image's ``rng``
    (``"per_image"``, the original's way) or always 0 (``"first"``)."""
    if choice == "per_image":
        return int(rng.integers(len(PROMPT_TEMPLATES)))
    if choice == "first":
        return 0
    raise ValueError(f"sample.generation_prompt must be one of {list(GENERATION_PROMPTS)}, got {choice!r}")


def edit_name(input_file: str, seed_index: int = 0, edit_format: str = "input") -> str:
    """``edit_<input file name>``, in the input's format (``edit_format`` "input", the original's),
    or ``edit_<input stem>.png`` ("png", lossless); ``_seed<k>`` follows the stem for the k-th
    further seed."""
    if edit_format not in EDIT_FORMATS:
        raise ValueError(f"sample.edit_format must be one of {list(EDIT_FORMATS)}, got {edit_format!r}")
    path = Path(input_file)
    seed_suffix = f"_seed{seed_index}" if seed_index else ""
    return f"{EDIT_PREFIX}{path.stem}{seed_suffix}{path.suffix if edit_format == 'input' else '.png'}"


def plan_edits(seed: int, input_files: Sequence[str], style_files: Sequence[str], input_name: str,
               style_name: str, generation_prompt: str = "per_image", seeds_per_input: int = 1,
               edit_format: str = "input") -> list[dict]:
    """One entry per (input file, seed index): ``{"input", "style", "template", "prompt", "seed",
    "seed_index", "edit"}`` (file names, the edit's after ``edit_format``; ``seed``: the noise
    seed), input-major."""
    entries = []
    for input_file in input_files:
        first_seed = image_seed(seed, input_file)
        rng = np.random.default_rng(first_seed)
        style = style_files[rng.integers(len(style_files))]
        template = prompt_template(generation_prompt, rng)
        prompt = PROMPT_TEMPLATES[template].format(input=input_name, style=style_name)
        for index in range(seeds_per_input):
            entries.append({"input": input_file, "style": style, "template": template, "prompt": prompt,
                            "seed": image_seed(seed + index, input_file) if index else first_seed,
                            "seed_index": index, "edit": edit_name(input_file, index, edit_format)})
    return entries
