"""The visual-prompt InstructPix2Pix policy (docs/method.md §2) and its frozen reference
(:class:`WithFrozenReference`, shared with the other backbone families).

Construction from a loaded ``StableDiffusionInstructPix2PixPipeline``:
- conv_in widened 8 -> 12 input channels (new channels zero, so the policy starts as IP2P);
- :class:`StylePromptAttention`, the cross-attention module producing the 4 style channels;
- LoRA adapters on the UNet attention projections, or full fine-tuning.

The reference (frozen initial model) reuses the same UNet with LoRA disabled plus frozen copies
of the small initial conv_in and style module, so no second UNet is held. With full
fine-tuning there are no adapters to switch off, so a frozen copy of the initial UNet is kept.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # by these names: diffusers' loader looks them up in this module
from diffusers.configuration_utils import register_to_config
from torch import nn

from editspecialists.diffusion.guidance import (
    BranchInputs,
    EditConditioning,
    GuidanceScales,
    branch_epsilon,
    branch_inputs,
)
from editspecialists.diffusion.pipeline import cast_model

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
VISUAL_PROMPT_CHANNELS = 4


class StylePromptAttention(ModelMixin, ConfigMixin):
    """Cross-attention from per-pixel (style ⊕ input) latents to the prompt's text states.

    Queries: the 2·C-vector of concat(style_latents, image_latents) at every latent pixel;
    keys/values: the prompt embedding (N, L, D). Output: (N, C_out, h, w) style channels.
    A diffusers model (config = the init arguments), so a pipeline saves and loads it as a component.
    """

    @register_to_config
    def __init__(self, latent_channels: int = 4, text_dim: int = 768, inner_dim: int = 320,
                 num_heads: int = 8, out_channels: int = VISUAL_PROMPT_CHANNELS):
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f"inner_dim {inner_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(2 * latent_channels, inner_dim, bias=False)
        self.to_k = nn.Linear(text_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(text_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, out_channels, bias=False)

    @classmethod
    def from_unet(cls, unet, num_heads: int = 8) -> "StylePromptAttention":
        """Initialise k/v from the UNet's first cross-attention block, q from its to_v (docs/method.md §10).

        q (inner × 2C) = to_v.weight (inner × D) split into 2C contiguous column groups, each
        averaged over its columns.
        """
        attn = first_cross_attention(unet)
        inner_dim, text_dim = attn.to_v.weight.shape
        latent_channels = unet.config.out_channels
        query_dim = 2 * latent_channels
        if text_dim % query_dim:
            raise ValueError(f"text dim {text_dim} is not divisible into {query_dim} column groups")
        module = cls(latent_channels, text_dim, inner_dim, num_heads)
        with torch.no_grad():
            module.to_k.weight.copy_(attn.to_k.weight.float())
            module.to_v.weight.copy_(attn.to_v.weight.float())
            grouped = attn.to_v.weight.float().reshape(inner_dim, query_dim, text_dim // query_dim)
            module.to_q.weight.copy_(grouped.mean(dim=-1))
        return module

    def forward(self, style_latents, image_latents, text_states):
        """(N, C, h, w), (N, C, h, w), (N, L, D) -> (N, C_out, h, w)."""
        batch, _, height, width = image_latents.shape
        pixels = torch.cat([style_latents, image_latents], dim=1).flatten(2).transpose(1, 2)
        dtype = self.to_q.weight.dtype
        query = self._split_heads(self.to_q(pixels.to(dtype)))
        key = self._split_heads(self.to_k(text_states.to(dtype)))
        value = self._split_heads(self.to_v(text_states.to(dtype)))
        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.transpose(1, 2).flatten(2)
        out = self.to_out(attended)
        return out.transpose(1, 2).reshape(batch, -1, height, width)

    def _split_heads(self, x):
        batch, length, dim = x.shape
        return x.reshape(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)


def first_cross_attention(unet):
    """The first cross-attention (``attn2``) of the UNet's down path (SD-1.5: down_blocks[0])."""
    for block in unet.down_blocks:
        for transformer in getattr(block, "attentions", []):
            return transformer.transformer_blocks[0].attn2
    raise ValueError("the UNet has no cross-attention block in its down path")


def widen_conv_in(unet, extra_channels: int = VISUAL_PROMPT_CHANNELS) -> None:
    """Replace conv_in by one with ``extra_channels`` more zero-initialised inputs (in place).

    The pretrained channels and the bias are kept, so outputs are unchanged at initialisation.
    ``unet.config.in_channels`` is updated so the widened UNet saves and reloads correctly.
    """
    old = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra_channels, old.out_channels, old.kernel_size,
                    old.stride, old.padding, device=old.weight.device, dtype=torch.float32)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)


class VisualPromptDenoiser(nn.Module):
    """A denoising network (held as ``backbone_name``) with the visual prompt's style module, whose
    ``input_layer`` takes the style channels. Subclasses compute the prediction (``forward``) and
    its step-invariant inputs (``branch_inputs``); :class:`WithFrozenReference` adds training."""

    backbone_name = "unet"
    input_layer = "conv_in"

    def __init__(self, backbone, style_module: nn.Module):
        super().__init__()
        setattr(self, self.backbone_name, backbone)
        self.style_module = style_module

    @property
    def backbone(self) -> nn.Module:
        """The denoising network."""
        return getattr(self, self.backbone_name)

    @property
    def active_backbone(self) -> nn.Module:
        """The network forward runs."""
        return self.backbone

    @property
    def active_style_module(self) -> nn.Module:
        """The style module :meth:`branch_inputs` runs."""
        return self.style_module

    def forward(self, latents, timesteps, cond, scales: GuidanceScales | None):
        """The prediction (:meth:`predict`) for ``latents`` at ``timesteps``; ``cond`` is an
        :class:`EditConditioning` or its step-invariant inputs (:meth:`branch_inputs`, computed once
        for many steps with the same modules). With ``latents`` None: those inputs of ``cond``,
        computed in a forward call so that a wrapper (DDP, FSDP: it gathers sharded weights for
        its module's forward only) runs them as it runs the prediction."""
        if latents is None:
            return self.branch_inputs(cond)
        if isinstance(cond, EditConditioning):
            cond = self.branch_inputs(cond)
        return self.predict(latents, timesteps, cond, scales)


class Denoiser(VisualPromptDenoiser):
    """The guided noise prediction of a 12-channel UNet and a style module: what the sampler and
    training call. A pipeline loaded from an export samples with this; the trainer's
    :class:`VisualPromptPolicy` adds the frozen reference and the training parts."""

    def predict(self, scaled_latents, timesteps, cond: BranchInputs, scales: GuidanceScales):
        """Guided ε for (N, 4, h, w) scaled noisy latents at 0-d or (N,) timesteps."""
        return branch_epsilon(self.active_backbone, cond, scaled_latents, timesteps, scales)

    def branch_inputs(self, cond: EditConditioning) -> BranchInputs:
        """The step-invariant UNet inputs of ``cond`` (style channels of the active style module)."""
        return branch_inputs(self.active_style_module, cond)


class WithFrozenReference:
    """The training side of a visual-prompt policy, mixed into a :class:`VisualPromptDenoiser`: its
    frozen initial model, switched in by
    :meth:`reference`, and its trainable weights.

    With LoRA the reference is the same backbone with its adapters off, plus frozen copies of the
    initial input layer and style module (no second backbone held); with full fine-tuning a frozen
    copy of the initial backbone.
    """

    def init_reference(self, use_lora: bool) -> None:
        """Take the frozen copies of the current (initial) modules; call at the end of ``__init__``."""
        self.use_lora = use_lora
        self._reference_parts = _FrozenReference(self.backbone, self.input_layer, self.style_module,
                                                 keep_backbone=not use_lora)
        self._adapter_layers = _adapter_layers(self.backbone) if use_lora else []
        self._use_reference = False

    @property
    def active_backbone(self) -> nn.Module:
        """Inside :meth:`reference` with full fine-tuning, the frozen initial copy; otherwise the
        trained backbone (with LoRA, its adapters are off inside :meth:`reference`)."""
        if self._use_reference and self._reference_parts.backbone is not None:
            return self._reference_parts.backbone
        return self.backbone

    @property
    def active_style_module(self) -> nn.Module:
        """Inside :meth:`reference` the frozen initial style module, otherwise the trained one."""
        return self._reference_parts.style_module if self._use_reference else self.style_module

    @contextmanager
    def reference(self, device: torch.device | str | None = None):
        """Within the block, forward runs the frozen initial model (LoRA off, initial modules).

        device: where the frozen initial modules compute within the block (a pipeline under
        ``enable_model_cpu_offload``, whose hooks move only its registered components: its
        execution device); they go back to their device after it. None: they stay where they are.
        """
        parts = self._reference_parts
        home = next(parts.parameters()).device
        if device is not None:
            parts.to(device)
        swapped_input = self.use_lora
        if swapped_input:
            trained_input = getattr(self.backbone, self.input_layer)
            setattr(self.backbone, self.input_layer, parts.input_layer)
            self._enable_adapters(False)
        self._use_reference = True
        try:
            yield self
        finally:
            self._use_reference = False
            if swapped_input:
                self._enable_adapters(True)
                setattr(self.backbone, self.input_layer, trained_input)
            if device is not None:
                parts.to(home)

    def _enable_adapters(self, enabled: bool) -> None:
        """Switch the LoRA adapters on or off, as ``enable_adapters``/``disable_adapters`` do,
        without their walk over every module of the backbone."""
        for layer in self._adapter_layers:
            layer.enable_adapters(enabled)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights that define the fine-tuned model: LoRA (or the backbone), input layer, style module."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}


class VisualPromptPolicy(WithFrozenReference, Denoiser):
    """UNet + style module whose forward is the 4-branch guided noise prediction, with its frozen
    initial model.

    Under DDP wrap this module; its forward is the only training entry point. Use
    ``with policy.reference():`` (on the unwrapped module) to run the frozen initial model.
    """

    def __init__(self, unet, style_module: StylePromptAttention, use_lora: bool):
        super().__init__(unet, style_module)
        self.init_reference(use_lora)


class _FrozenReference(nn.Module):
    """Frozen copies of the initial input layer and style module (and of the backbone for full
    fine-tuning).

    Their parameters have ``requires_grad=False``, so they never reach the optimizer, DDP's
    gradient reduction or the checkpoint (:meth:`WithFrozenReference.trainable_state_dict`).
    """

    def __init__(self, backbone, input_layer: str, style_module, keep_backbone: bool):
        super().__init__()
        self.input_layer = _frozen_copy(getattr(backbone, input_layer))
        self.style_module = _frozen_copy(style_module)
        self.backbone = _frozen_copy(backbone) if keep_backbone else None


def _adapter_layers(backbone) -> list[nn.Module]:
    """The backbone's PEFT adapter layers (plain list: they stay registered under the backbone only)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in backbone.modules() if isinstance(module, BaseTunerLayer)]


def _frozen_copy(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    clone.requires_grad_(False)
    return clone.eval()


# ``lora_init`` names -> peft's ``init_lora_weights``. Both start B at zero (the policy starts as
# the base model); A is Kaiming-uniform (std 1/sqrt(3 fan_in)) or N(0, (1/r)^2).
LORA_INITS = {"default": True, "gaussian": "gaussian"}
GRADIENT_CHECKPOINTING = ("without_lora", "always", "never")


def uses_gradient_checkpointing(setting: str, use_lora: bool) -> bool:
    """Whether the UNet checkpoints activations: ``"without_lora"`` (the original's rule: full
    fine-tuning only), ``"always"`` or ``"never"``."""
    if setting not in GRADIENT_CHECKPOINTING:
        raise ValueError(f"gradient_checkpointing must be one of {list(GRADIENT_CHECKPOINTING)}, got {setting!r}")
    return setting == "always" or (setting == "without_lora" and not use_lora)


def make_trainable(backbone, *, use_lora: bool, lora_rank: int, lora_alpha: float, lora_init: str,
                   targets: list[str], frozen_dtype: torch.dtype) -> None:
    """LoRA adapters (peft, on the modules named ``targets``) trainable in fp32 over the frozen
    backbone cast to ``frozen_dtype``; or, without LoRA, every weight trainable in fp32 (in place)."""
    if lora_init not in LORA_INITS:
        raise ValueError(f"lora_init must be one of {sorted(LORA_INITS)}, got {lora_init!r}")
    if not use_lora:
        backbone.float().requires_grad_(True)
        return
    from peft import LoraConfig

    backbone.requires_grad_(False)
    if frozen_dtype != backbone.dtype:
        cast_model(backbone, dtype=frozen_dtype)
    backbone.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha, init_lora_weights=LORA_INITS[lora_init],
                                    target_modules=list(targets)))
    for param in backbone.parameters():
        if param.requires_grad:
            param.data = param.data.float()


def build_policy(unet, *, use_lora: bool, lora_rank: int = 8, lora_alpha: int = 8, lora_init: str = "default",
                 num_heads: int = 8, frozen_dtype: torch.dtype = torch.float32,
                 targets=tuple(LORA_TARGETS)) -> VisualPromptPolicy:
    """Turn a pretrained 8-channel IP2P UNet into the visual-prompt policy (in place).

    Trainable (fp32): LoRA adapters on ``targets`` (or every UNet weight when ``use_lora`` is False), the
    widened conv_in and the style module. With LoRA the frozen base weights are cast to
    ``frozen_dtype`` to save memory; ``lora_init`` is a key of :data:`LORA_INITS`.
    """
    if unet.config.in_channels != 8:
        raise ValueError(
            f"expected an InstructPix2Pix UNet with 8 input channels, got {unet.config.in_channels}"
        )
    style_module = StylePromptAttention.from_unet(unet, num_heads=num_heads)
    make_trainable(unet, use_lora=use_lora, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_init=lora_init,
                   targets=list(targets), frozen_dtype=frozen_dtype)
    widen_conv_in(unet)
    style_module.to(unet.device)
    return VisualPromptPolicy(unet, style_module, use_lora)
