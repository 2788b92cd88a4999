"""The four-branch classifier-free guidance of the visual-prompt editor (docs/method.md §2).

This is the only place where the branches are assembled; the sampler and the trainer both reach
it through :class:`editspecialists.diffusion.policy.VisualPromptPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuidanceScales:
    """s_txt (prompt), s_img (input image) and s_sty (style image) guidance weights."""

    text: float = 7.5
    image: float = 1.5
    style: float = 3.0

    @classmethod
    def from_config(cls, sample) -> "GuidanceScales":
        """The scales of a config's ``sample`` section (``guidance_scale``, ``image_guidance_scale``,
        ``style_image_guidance_scale``)."""
        return cls(sample.guidance_scale, sample.image_guidance_scale, sample.style_image_guidance_scale)


@dataclass
class EditConditioning:
    """Per-element conditioning of one UNet batch of N elements.

    image_latents, style_latents: (N, C, h, w) VAE posterior modes of 2x - 1: unscaled for
        InstructPix2Pix (C = 4), shifted and scaled as the Kontext pipeline encodes (C = 16).
    prompt_embeds: (N, L, D) text-encoder states of the edit instruction (Kontext: T5's).
    empty_embeds: (1, L, D) text-encoder states of the empty prompt (None for Kontext: no
        classifier-free branches).
    style_query_latents: (N, 4, h, w) latents the style module attends from in place of
        ``image_latents``, or None (``image_latents``). Only the research code's training forward
        (``research_code_compat``) sets them: to the unscaled noisy latents.
    pooled_embeds: (N, P) pooled prompt projection (Kontext: CLIP's), None for InstructPix2Pix.
    """

    image_latents: torch.Tensor
    style_latents: torch.Tensor
    prompt_embeds: torch.Tensor
    empty_embeds: torch.Tensor | None
    style_query_latents: torch.Tensor | None = None
    pooled_embeds: torch.Tensor | None = None

    def repeat_interleave(self, repeats: int) -> "EditConditioning":
        """Each element repeated ``repeats`` times in place: N -> N·repeats (edits of an input)."""
        def repeated(tensor):
            return None if tensor is None else tensor.repeat_interleave(repeats, dim=0)

        return EditConditioning(repeated(self.image_latents), repeated(self.style_latents),
                                repeated(self.prompt_embeds), self.empty_embeds, repeated(self.style_query_latents),
                                repeated(self.pooled_embeds))


def combine_branches(eps_text, eps_image, eps_uncond, eps_image_style, scales: GuidanceScales):
    """ε = ε_u + s_img(ε_i − ε_u) + s_sty(ε_is − ε_i) + s_txt(ε_t − ε_is)."""
    return (
        eps_uncond
        + scales.image * (eps_image - eps_uncond)
        + scales.style * (eps_image_style - eps_image)
        + scales.text * (eps_text - eps_image_style)
    )


@dataclass
class BranchInputs:
    """The step-invariant part of the 4-branch UNet batch of N elements (see :func:`branch_inputs`).

    channels: (4N, 8, h, w) image-latent and style channels of the four branches.
    text: (4N, L, D) text states of the four branches.
    Computing them once per trajectory saves the style module and two concatenations per step.
    """

    channels: torch.Tensor
    text: torch.Tensor


def branch_inputs(style_module, cond: EditConditioning) -> BranchInputs:
    """Image/style channels and text states of the 4N-element batch, in branch order text (prompt,
    input, style), image (empty, input, 0), uncond (empty, 0, 0), image_style (empty, input, style).

    The style channels come from ``style_module``, mapping (style_latents, image_latents,
    prompt_embeds) to (N, 4, h, w), always on the prompt, attending from (style, image) latents, or
    (style, ``style_query_latents``) when they are set."""
    query = cond.image_latents if cond.style_query_latents is None else cond.style_query_latents
    style = style_module(cond.style_latents, query, cond.prompt_embeds)
    zeros = torch.zeros_like(style)
    image = cond.image_latents.to(style.dtype)
    empty = cond.empty_embeds.expand_as(cond.prompt_embeds)
    channels = torch.cat([torch.cat([image, image, zeros, image]), torch.cat([style, zeros, zeros, style])],
                         dim=1)
    return BranchInputs(channels, torch.cat([cond.prompt_embeds, empty, empty, empty]))


def branch_epsilon(unet, branches: BranchInputs, scaled_latents, timesteps,
                   scales: GuidanceScales) -> torch.Tensor:
    """Guided ε, (N, 4, h, w) in the UNet's output dtype, from precomputed :class:`BranchInputs`:
    one call of ``unet`` (12-channel conv_in) on all four branches' 4N elements.

    scaled_latents: (N, 4, h, w) noisy latents scaled for the model input; timesteps: 0-d or (N,).
    """
    latents = scaled_latents.repeat(4, 1, 1, 1).to(branches.channels.dtype)
    model_input = torch.cat([latents, branches.channels], dim=1)
    if timesteps.ndim == 1:
        timesteps = timesteps.repeat(4)
    eps = unet(model_input, timesteps, encoder_hidden_states=branches.text).sample
    return combine_branches(*eps.chunk(4), scales)
