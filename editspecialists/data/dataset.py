"""Training items of docs/method.md §6: an input image, a random style image and an edit instruction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import torch

from editspecialists.data.images import DEFAULT_RESIZE_FILTER, load_image_folder

PROMPT_TEMPLATES = (
    "turn the {input} into {style}",
    "replace the {input} with {style}",
    "transform the {input} into {style}",
    "convert the {input} to {style}",
    "change the {input} to {style}",
    "morph the {input} into {style}",
    "modify the {input} into {style}",
    "swap the {input} for {style}",
)
# The values of sample.generation_prompt: one template drawn per image (the original's way), or
# always the first.
GENERATION_PROMPTS = ("per_image", "first")


@dataclass
class EditBatch:
    """B training items: inputs/styles (B, 3, S, S) in [0, 1], prompts and source files."""

    inputs: torch.Tensor
    styles: torch.Tensor
    prompts: list[str]
    input_files: list[str]
    style_files: list[str]


class EditDataset:
    """Input and style images held in memory (users bring tens to hundreds of photos).

    To train on other data, pass ``Trainer(config, dataset=...)`` any object with the same
    ``epoch_batches`` method. ``exclude``: input file names never trained on (the held-out ones).
    """

    def __init__(self, input_dir: str | Path, style_dir: str | Path, input_name: str, style_name: str,
                 size: int, templates: tuple[str, ...] = PROMPT_TEMPLATES, exclude: Collection[str] = (),
                 resize_filter: str = DEFAULT_RESIZE_FILTER):
        self.input_files, self.inputs = load_image_folder(input_dir, size, "input image",
                                                            lambda name: name not in exclude, key="inputimg_dir",
                                                            resize_filter=resize_filter)
        self.style_files, self.styles = load_image_folder(style_dir, size, "style image", key="styleimg_dir",
                                                            resize_filter=resize_filter)
        self.input_name, self.style_name = input_name, style_name
        self.templates = templates

    def __len__(self) -> int:
        return len(self.input_files)

    def prompt(self, template_index: int) -> str:
        return self.templates[template_index].format(input=self.input_name, style=self.style_name)

    def batch(self, input_index: torch.Tensor, style_index: torch.Tensor,
              template_index: torch.Tensor) -> EditBatch:
        """The items with the given input, style and template indices (each (B,) long)."""
        return EditBatch(
            inputs=self.inputs[input_index],
            styles=self.styles[style_index],
            prompts=[self.prompt(int(t)) for t in template_index],
            input_files=[self.input_files[int(i)].name for i in input_index],
            style_files=[self.style_files[int(s)].name for s in style_index],
        )

    def epoch_batches(self, batch_size: int, num_batches: int, generator: torch.Generator,
                      process_index: int = 0, num_processes: int = 1) -> list[EditBatch]:
        """This process's ``num_batches`` batches of an epoch.

        Inputs come from shuffled sweeps over the dataset (repeated as needed), style images and
        templates are drawn at random. ``generator`` must be seeded identically on every
        process: all draws are made for all processes and each takes its own share, so processes
        see different items.
        """
        needed = batch_size * num_batches * num_processes
        sweeps = -(-needed // len(self))
        inputs = torch.cat([torch.randperm(len(self), generator=generator) for _ in range(sweeps)])[:needed]
        styles = torch.randint(len(self.style_files), (needed,), generator=generator)
        templates = torch.randint(len(self.templates), (needed,), generator=generator)
        shape = (num_processes, num_batches, batch_size)
        mine = [draws.view(shape)[process_index] for draws in (inputs, styles, templates)]
        return [self.batch(*indices) for indices in zip(*mine)]
