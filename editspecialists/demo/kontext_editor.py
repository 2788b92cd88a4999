"""A tiny FLUX.1 Kontext that behaves like a trained editor, for the demo's kontext preset.

The random stand-in (:mod:`editspecialists.demo.kontext_standin`) cannot show the trainer learning:
its random VAE decodes every latent to nearly the same grey. As :mod:`editspecialists.demo.editor`
does for InstructPix2Pix, this pretrains it on the demo images in two supervised stages:

1. the VAE as an autoencoder (:func:`~editspecialists.demo.editor.train_vae`), then its
   ``shift_factor`` and ``scaling_factor`` set so that shifted, scaled latents have mean 0 and
   standard deviation 1 (what FLUX's factors do for its VAE);
2. the transformer by flow matching on the synthetic edit "turn the car into lego": with x0 the
   target's latents and ε noise, x_t = (1 − t)·x0 + t·ε at a logit-normal time t (the rectified-
   flow training of SD3 and FLUX), the velocity ε − x0 is regressed from x_t beside the input
   image's latents as Kontext's context tokens, the instruction's T5 states and CLIP's pooled
   projection, and the pipeline's guidance value 2.5 (an input the stand-in learns with; it is
   not distilled from a teacher).

Everything runs at the demo's 32 px (4 × 4 latents, 4 tokens: the VAE keeps FLUX's factor 8),
with a wider transformer and VAE than the stand-in's (:data:`EDITOR_TRANSFORMER`,
:data:`EDITOR_VAE`) and prompts of :data:`PROMPT_TOKENS` T5 tokens.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from editspecialists.data.dataset import PROMPT_TEMPLATES
from editspecialists.demo.cache import cached_build, default_cache_root
from editspecialists.demo.editor import autoencoder_batch, encode_in_chunks, reconstruction_mse, train_vae
from editspecialists.demo.fitting import WeightAverage, fit, torch_threads
from editspecialists.demo.images import INPUT_NAME, STYLE_NAME
from editspecialists.demo.kontext_standin import (build_tiny_kontext, write_kontext_model_index,
                                                  write_kontext_scheduler_config)
from editspecialists.demo.scenes import DEMO_RESOLUTION, demo_training_images, edit_examples, sample_edit_pairs
from editspecialists.diffusion.kontext import (KontextInputs, encode_kontext_images, kontext_velocity, pack_latents,
                                               token_ids)

logger = logging.getLogger(__name__)
GUIDANCE = 2.5  # the Kontext pipeline's default guidance_scale
# The editor's sizes, wider than the stand-in's (tests): a transformer narrower than the 64
# features of a packed token, or a VAE of 8-16 channels at factor 8, turns every edit into a grey
# blur (measured: base edits without the scene's colours).
EDITOR_TRANSFORMER = {"num_layers": 2, "num_single_layers": 2, "num_attention_heads": 4, "attention_head_dim": 32,
                      "axes_dims_rope": [8, 12, 12]}
EDITOR_VAE = {"block_out_channels": [32, 64, 64, 64]}
PROMPT_TOKENS = 64  # T5 tokens per prompt in the demo (config/demo.py:kontext): the demo's prompts fit


@torch.no_grad()
def set_latent_factors(vae, images: torch.Tensor) -> tuple[float, float]:
    """Set the VAE's ``shift_factor`` (mean of the posterior modes of ``images``) and
    ``scaling_factor`` (1 / their standard deviation); returns both."""
    modes = encode_in_chunks(vae, images)
    shift, scale = modes.mean().item(), 1.0 / modes.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return shift, scale


def context_inputs(side: int, prompt_embeds: torch.Tensor, pooled: torch.Tensor) -> KontextInputs:
    """The transformer inputs of a batch at ``side`` × ``side`` latents but its tokens (set per step)."""
    ids, text_ids = token_ids(side, side, prompt_embeds.shape[1], "cpu", torch.float32)
    return KontextInputs(None, None, ids, text_ids, prompt_embeds, pooled)


def train_transformer(transformer, image_latents: torch.Tensor, target_latents: torch.Tensor,
                      prompt_embeds: torch.Tensor, pooled: torch.Tensor, *, steps: int, batch_size: int,
                      learning_rate: float, ema_decay: float, generator: torch.Generator) -> list[float]:
    """Train ``transformer`` in place by flow matching on the encoded pairs (N, 16, s, s), one random
    instruction (``prompt_embeds`` (P, L, D), ``pooled`` (P, P_dim)) per example, then give it the
    moving average of its weights; returns the losses."""
    side = target_latents.shape[-1]

    def loss(step: int) -> torch.Tensor:
        index = torch.randint(len(target_latents), (batch_size,), generator=generator)
        x0, image = target_latents[index], image_latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        times = torch.sigmoid(torch.randn(batch_size, generator=generator))
        noisy = (1 - times).view(-1, 1, 1, 1) * x0 + times.view(-1, 1, 1, 1) * noise
        which = torch.randint(len(prompt_embeds), (batch_size,), generator=generator)
        cond = context_inputs(side, prompt_embeds[which], pooled[which])
        velocity = kontext_velocity(transformer, pack_latents(noisy), pack_latents(image), times, GUIDANCE, cond)
        return F.mse_loss(velocity, pack_latents(noise - x0))

    average = WeightAverage(transformer, ema_decay)
    losses = fit(transformer, "demo kontext editor: transformer", loss, steps=steps, learning_rate=learning_rate,
                 after_step=average.update)
    average.copy_to()
    return losses


def pretrain_kontext_editor(pipeline_folder: str | Path, out_folder: str | Path, *, seed: int = 0,
                            resolution: int = DEMO_RESOLUTION, vae_steps: int = 300, vae_batch_size: int = 16,
                            vae_learning_rate: float = 2e-3, vae_latent_noise: float = 0.2, num_pairs: int = 2048,
                            transformer_steps: int = 1000, transformer_batch_size: int = 32,
                            transformer_learning_rate: float = 2e-3, ema_decay: float = 0.99,
                            max_sequence_length: int = PROMPT_TOKENS, num_threads: int = 2) -> dict[str, float]:
    """Pretrain the tiny Kontext pipeline of ``pipeline_folder`` on the demo's cars and walls at
    ``resolution`` px and save it to ``out_folder`` (the real repo's model index and scheduler
    config kept); returns the VAE's reconstruction MSE, its factors and the seconds taken."""
    from diffusers import FluxKontextPipeline

    with torch_threads(num_threads):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        pipe = FluxKontextPipeline.from_pretrained(pipeline_folder)
        cars, walls = demo_training_images(seed=seed)
        examples = edit_examples(cars, walls, resolution)
        train_vae(pipe.vae, examples, steps=vae_steps, batch_size=vae_batch_size, learning_rate=vae_learning_rate,
                  latent_noise=vae_latent_noise, generator=generator)
        shift, scale = set_latent_factors(pipe.vae, autoencoder_batch(examples, 256, generator))
        pipe.vae.requires_grad_(False)

        instructions = [t.format(input=INPUT_NAME, style=STYLE_NAME) for t in PROMPT_TEMPLATES]
        with torch.no_grad():
            prompt_embeds, pooled, _ = pipe.encode_prompt(instructions, max_sequence_length=max_sequence_length)
            inputs, targets = sample_edit_pairs(examples, num_pairs, generator)
            image_latents = torch.cat([encode_kontext_images(pipe.vae, part) for part in inputs.split(64)])
            target_latents = torch.cat([encode_kontext_images(pipe.vae, part) for part in targets.split(64)])
        train_transformer(pipe.transformer, image_latents, target_latents, prompt_embeds, pooled,
                          steps=transformer_steps, batch_size=transformer_batch_size,
                          learning_rate=transformer_learning_rate, ema_decay=ema_decay, generator=generator)
        pipe.save_pretrained(out_folder)
        write_kontext_model_index(Path(out_folder))
        write_kontext_scheduler_config(Path(out_folder))
        report = {"vae_reconstruction_mse": reconstruction_mse(pipe.vae, examples.cars), "shift_factor": shift,
                  "scaling_factor": scale, "seconds": time.perf_counter() - start}
        logger.info("demo kontext editor trained in %.0f s (VAE reconstruction MSE %.4f)", report["seconds"],
                    report["vae_reconstruction_mse"])
        return report


def widen_standin(folder: Path, seed: int = 0) -> None:
    """Give the stand-in pipeline saved in ``folder`` the editor's transformer and VAE sizes
    (:data:`EDITOR_TRANSFORMER`, :data:`EDITOR_VAE`; random, seeded), everything else kept."""
    from diffusers import AutoencoderKL, FluxKontextPipeline, FluxTransformer2DModel

    pipe = FluxKontextPipeline.from_pretrained(folder)
    torch.manual_seed(seed)
    pipe.transformer = FluxTransformer2DModel.from_config({**pipe.transformer.config, **EDITOR_TRANSFORMER})
    pipe.vae = AutoencoderKL.from_config({**pipe.vae.config, **EDITOR_VAE})
    pipe.save_pretrained(folder)


def build_kontext_editor(folder: Path, seed: int = 0) -> dict[str, float]:
    """Pretrain a tiny FLUX.1 Kontext on the toy "car -> lego" edit (once)."""
    with tempfile.TemporaryDirectory() as scratch:
        build_tiny_kontext(Path(scratch), seed=seed)
        widen_standin(Path(scratch), seed=seed)
        return pretrain_kontext_editor(scratch, folder, seed=seed)


def kontext_editor_folder(root: Path | None = None) -> Path:
    """Where :func:`kontext_editor` keeps the pipeline under ``root`` (nothing is built here)."""
    return (Path(root) if root else default_cache_root()) / "demo-kontext-editor"


def kontext_editor(root: Path | None = None) -> Path:
    """Folder of the pretrained demo Kontext pipeline under ``root`` (default: the cache), built on
    first use and reused afterwards."""
    return cached_build(kontext_editor_folder(root), build_kontext_editor)
