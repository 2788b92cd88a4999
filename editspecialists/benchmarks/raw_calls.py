"""Raw UNet calls on random inputs: the pure model time that the efficiencies divide by."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editspecialists.benchmarks.models import BenchModels


@dataclass
class UNetBatch:
    """Random UNet inputs of one call: latents (N, 12, h, w), timesteps (0-d or (N,)), text (N, L, D)."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor

    @classmethod
    def like(cls, models: BenchModels, elements: int, timesteps: torch.Tensor) -> "UNetBatch":
        unet, cond = models.policy.unet, models.cond
        _, _, height, width = cond.image_latents.shape
        latents = torch.randn(elements, unet.config.in_channels, height, width, device=models.device)
        text = torch.randn(elements, *cond.prompt_embeds.shape[1:], device=models.device)
        return cls(latents, timesteps, text)


def unet_forward(unet, inputs: UNetBatch) -> torch.Tensor:
    return unet(inputs.latents, inputs.timesteps, encoder_hidden_states=inputs.text).sample


def unet_forward_backward(policy, inputs: UNetBatch) -> None:
    """Forward and backward of the UNet into its trainable (LoRA, conv_in) weights; the gradients
    are dropped afterwards, so timing this leaves the training state untouched."""
    unet_forward(policy.unet, inputs).float().square().mean().backward()
    policy.zero_grad(set_to_none=True)


def reference_forward(policy, inputs: UNetBatch) -> torch.Tensor:
    """The frozen initial UNet (adapters disabled, initial conv_in) without gradient."""
    with policy.reference(), torch.no_grad():
        return unet_forward(policy.unet, inputs)
