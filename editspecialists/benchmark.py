"""Throughput, efficiency and memory of the sampling and training hot loops (issue 7).

What is measured, for one model size and configuration:

- sampling: :func:`sample_edits` in denoising steps × edits per second, against a naive sampler
  written the way the research code did it (:func:`naive_sample_edits`), and against the raw UNet
  forward at the same batch shape (4 branches × nb_gen × batch, 12 channels);
- training: the trainer's micro-step (:func:`training_micro_step`) in trained transitions per
  second, against the raw UNet forward+backward and the reference forward at its shapes;
- feedback: edits scored per second by each feedback model (:func:`measure_feedback`);
- memory: peak CUDA memory allocated per phase on GPU, the process's peak RSS on CPU.

Efficiency = pure model time / measured time. Every timing is a median over repeats after
warm-up. The timings a ratio compares are taken in rounds (each function once per round, in
turn) and a ratio is the median of its per-round ratios, so load that drifts on a shared machine
slows both sides alike. On CUDA the device is synchronised around each timed call only.
"""

from __future__ import annotations

import datetime
import math
import platform
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from editspecialists.demo.cache import cached_build, default_cache_root
from editspecialists.demo.policy_standin import (IP2P_SCHEDULER_CONFIG, byte_level_clip_tokenizer, tiny_ip2p,
                                                 write_ip2p_scheduler_config)
from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.logprob import is_euler_ancestral, step_is_stochastic
from editspecialists.diffusion.pipeline import (decode_latents, encode_images, encode_prompts, load_pipeline,
                                                place_encoders)
from editspecialists.diffusion.policy import build_policy
from editspecialists.diffusion.sampler import Trajectories, initial_noise, sample_edits
from editspecialists.precision import dtype_named
from editspecialists.training.trainer import micro_batch_loss, zero_loss

PROMPTS = ("turn the car into lego", "replace the car with lego", "make the car out of lego")


# ---------------------------------------------------------------------------------- model sizes
@dataclass(frozen=True)
class ModelSize:
    """A benchmark model and its default workload (image side in pixels, steps, batch, nb_gen,
    timed repeats: more where a run is short and noisy)."""

    name: str
    folder: Callable[[Path], Path]  # cache root -> saved pipeline folder (built on first use)
    resolution: int
    steps: int
    batch: int
    nb_gen: int
    repeats: int


def _save_ip2p_pipeline(folder: Path, unet, vae, text_encoder) -> None:
    """Save an InstructPix2Pix pipeline around the given modules with IP2P's scheduler."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    scheduler = EulerAncestralDiscreteScheduler.from_config(IP2P_SCHEDULER_CONFIG)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=byte_level_clip_tokenizer(), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    write_ip2p_scheduler_config(folder)


def _sd_layout_unet(block_out_channels, cross_attention_dim: int, sample_size: int):
    """SD-1.5 UNet layout (3 cross-attention down blocks + 1 plain, 2 layers, 8 heads), 8 inputs."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=8,
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )


def _sd_layout_vae(block_out_channels, sample_size: int):
    """SD-1.5 VAE layout: 4 encoder/decoder blocks (8x downsampling), 2 layers, 4 latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels,
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
    )


def _clip_text_encoder(hidden_size: int, layers: int, heads: int, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        hidden_act="quick_gelu", projection_dim=hidden_size, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def build_small_ip2p(folder: Path, seed: int = 0) -> None:
    """SD-1.5 block layout with narrow channels (UNet 32-64-64-64, VAE 32-64-64-64, text dim 64)."""
    torch.manual_seed(seed)
    text_encoder = _clip_text_encoder(hidden_size=64, layers=2, heads=4, vocab_size=1000)
    unet = _sd_layout_unet((32, 64, 64, 64), cross_attention_dim=64, sample_size=8)
    _save_ip2p_pipeline(folder, unet, _sd_layout_vae((32, 64, 64, 64), sample_size=64), text_encoder)


def build_sd15_ip2p(folder: Path, seed: int = 0) -> None:
    """The real SD-1.5 / InstructPix2Pix architecture (UNet 320-640-1280-1280 with 8 input
    channels and cross-attention dim 768, VAE 128-256-512-512, CLIP-L text encoder), random weights."""
    torch.manual_seed(seed)
    text_encoder = _clip_text_encoder(hidden_size=768, layers=12, heads=12, vocab_size=49408)
    unet = _sd_layout_unet((320, 640, 1280, 1280), cross_attention_dim=768, sample_size=64)
    _save_ip2p_pipeline(folder, unet, _sd_layout_vae((128, 256, 512, 512), sample_size=512), text_encoder)


SIZES = {
    "tiny": ModelSize("tiny", tiny_ip2p, resolution=8, steps=10, batch=2, nb_gen=2, repeats=9),
    "small": ModelSize("small", lambda root: cached_build(root / "bench-small-ip2p", build_small_ip2p),
                       resolution=64, steps=10, batch=2, nb_gen=2, repeats=5),
    "sd15": ModelSize("sd15", lambda root: cached_build(root / "bench-sd15-ip2p", build_sd15_ip2p),
                      resolution=256, steps=20, batch=4, nb_gen=2, repeats=5),
}


# ---------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BenchSettings:
    """One benchmark run. ``None`` workload fields take the model size's defaults."""

    model: str = "tiny"
    steps: int | None = None
    batch: int | None = None  # inputs per sampling batch
    nb_gen: int | None = None  # edits per input
    train_batch: int = 1  # inputs per training micro-step (each with its nb_gen edits)
    accumulation: int = 8  # micro-steps per optimizer step (train.gradient_accumulation_steps)
    resolution: int | None = None  # image side in pixels
    dtype: str = "fp32"  # autocast dtype, also the dtype of the frozen weights
    channels_last: bool = False  # UNet and VAE weights in channels-last memory format
    threads: int = 1  # torch CPU threads
    repeats: int | None = None  # timed rounds
    warmup: int = 1
    device: str = ""  # empty: cuda when available, else cpu
    seed: int = 0
    cache: str = ""  # model cache root; empty: editspecialists' default
    feedback: bool = True  # measure the feedback models

    def resolved(self) -> "BenchSettings":
        """Workload fields filled from :data:`SIZES`; device chosen; values checked."""
        if self.model not in SIZES:
            raise ValueError(f"model={self.model!r}: choose one of {sorted(SIZES)}")
        dtype_named(self.dtype, "dtype")
        size = SIZES[self.model]
        workload = ("steps", "batch", "nb_gen", "resolution", "repeats")
        defaults = {name: getattr(size, name) for name in workload}
        filled = {name: value if getattr(self, name) is None else getattr(self, name)
                  for name, value in defaults.items()}
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        settings = replace(self, device=device, **filled)
        counts = (settings.batch, settings.train_batch, settings.accumulation, settings.repeats)
        if settings.steps < 2 or settings.nb_gen < 2 or min(counts) < 1:
            raise ValueError("need steps >= 2, nb_gen >= 2 and batch, train_batch, accumulation, "
                             "repeats >= 1")
        if settings.train_batch > settings.batch:
            raise ValueError(f"train_batch {settings.train_batch} exceeds the sampled batch {settings.batch}")
        return settings


# ---------------------------------------------------------------------------------- models
@dataclass
class BenchModels:
    """The policy and frozen parts of one benchmark, with the sampled batch's conditioning."""

    pipe: object
    policy: object
    cond: EditConditioning  # B inputs
    inputs: torch.Tensor  # (B, 3, H, W) in [0, 1]
    styles: torch.Tensor  # (B, 3, H, W) in [0, 1]
    device: torch.device
    dtype: torch.dtype
    scales: GuidanceScales

    @property
    def scheduler(self):
        return self.pipe.scheduler

    def autocast(self):
        """The trainer's mixed-precision context (nothing in fp32)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def model_folder(settings: BenchSettings) -> Path:
    root = Path(settings.cache) if settings.cache else default_cache_root()
    return SIZES[settings.model].folder(root)


def load_models(settings: BenchSettings) -> BenchModels:
    """Load the size's saved pipeline through :func:`load_pipeline`, build the LoRA policy as the
    trainer does (frozen weights in ``dtype``) and encode random input/style images."""
    device, dtype = torch.device(settings.device), dtype_named(settings.dtype, "dtype")
    pipe = load_pipeline(str(model_folder(settings)))
    place_encoders(pipe, device, dtype)
    pipe.unet.to(device)
    policy = build_policy(pipe.unet, use_lora=True, frozen_dtype=dtype).eval()
    if settings.channels_last:
        policy.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.scheduler.set_timesteps(settings.steps, device=device)
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (settings.batch, 3, settings.resolution, settings.resolution)
    inputs, styles = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(settings.batch)]
    cond = EditConditioning(
        encode_images(pipe.vae, inputs).float(),
        encode_images(pipe.vae, styles).float(),
        encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts).float(),
        encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]).float(),
    )
    return BenchModels(pipe, policy, cond, inputs.to(device), styles.to(device), device, dtype,
                       GuidanceScales())


# ---------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by ``fn()``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class Rounds:
    """Seconds of each timed function per round: ``samples[name][round]``."""

    def __init__(self, samples: dict[str, list[float]]):
        self.samples = samples

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def median_ratio(self, numerator: Callable[[dict], float], denominator: str) -> float:
        """Median over rounds of ``numerator(seconds of the round) / seconds[denominator]``.

        Each ratio compares timings of the same round, so load that drifts between rounds
        cancels out.
        """
        names = list(self.samples)
        ratios = []
        for values in zip(*self.samples.values()):
            seconds = dict(zip(names, values))
            ratios.append(numerator(seconds) / seconds[denominator])
        return statistics.median(ratios)


def interleaved_rounds(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int,
                       device: torch.device) -> Rounds:
    """Time every function once per round, in turn, for ``warmup`` untimed and ``repeats`` timed rounds."""
    samples = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            seconds = timed(fn, device)
            if round_index >= warmup:
                samples[name].append(seconds)
    return Rounds(samples)


# ---------------------------------------------------------------------------------- naive sampler
def _naive_sigmas(scheduler, timestep) -> tuple[float, float]:
    """(sigma_from, sigma_to) read on the host, as the research code did (two host syncs)."""
    index = int((scheduler.timesteps == timestep).nonzero().item())
    return scheduler.sigmas[index].item(), scheduler.sigmas[index + 1].item()


def _naive_euler_step(scheduler, eps, timestep, sample, generator):
    """Euler-ancestral step with log-prob, one batch element at a time with host-side sigmas."""
    next_latents, log_probs = [], []
    for element in range(sample.shape[0]):
        sigma_from, sigma_to = _naive_sigmas(scheduler, timestep)
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = max(sigma_to**2 - sigma_up**2, 0.0) ** 0.5
        x = sample[element].float()
        mean = x + eps[element].float() * (sigma_down - sigma_from)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        prev = mean + sigma_up * noise
        if sigma_up > 0:
            log_density = (-((prev - mean) ** 2) / (2 * sigma_up**2) - math.log(sigma_up)
                           - 0.5 * math.log(2 * math.pi))
            log_probs.append(log_density.mean())
        else:
            log_probs.append(torch.zeros((), device=x.device))
        next_latents.append(prev)
    return torch.stack(next_latents), torch.stack(log_probs)


@torch.no_grad()
def naive_sample_edits(policy, scheduler, vae, cond: EditConditioning, *, nb_gen: int,
                       scales: GuidanceScales, generator: torch.Generator | None = None,
                       autocast=nullcontext) -> Trajectories:
    """The research code's sampler: each edit is a separate trajectory with its own 4-branch UNet
    call per step (B inputs, 4·B elements, style channels recomputed at every call), and the
    scheduler step loops over batch elements and reads sigmas on the host. Euler-ancestral only.
    Returns :class:`Trajectories` like :func:`sample_edits` (with other random draws).
    """
    if not is_euler_ancestral(scheduler):
        raise ValueError("the naive baseline implements the Euler-ancestral scheduler only")
    batch, _, height, width = cond.image_latents.shape
    latent_shape = (vae.config.latent_channels, height, width)
    start = initial_noise(batch, 1, latent_shape, scheduler, generator, cond.image_latents.device)
    trajectories, log_probs, images = [], [], []
    for _ in range(nb_gen):
        latents, path, scores = start, [start], []
        for timestep in scheduler.timesteps:
            sigma_from, _ = _naive_sigmas(scheduler, timestep)
            with autocast():
                eps = policy(latents / (sigma_from**2 + 1) ** 0.5, timestep, cond, scales)
            latents, log_prob = _naive_euler_step(scheduler, eps, timestep, latents, generator)
            path.append(latents)
            scores.append(log_prob)
        trajectories.append(torch.stack(path, dim=1))
        log_probs.append(torch.stack(scores, dim=1))
        images.append(decode_latents(vae, latents))
    return Trajectories(
        images=torch.stack(images, dim=1),
        latents=torch.stack(trajectories, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        timesteps=scheduler.timesteps,
        trainable=step_is_stochastic(scheduler),
        image_latents=cond.image_latents,
        style_latents=cond.style_latents,
        prompt_embeds=cond.prompt_embeds,
    )


# ---------------------------------------------------------------------------------- training
def training_micro_step(policy, scheduler, batch: Trajectories, step_index: torch.Tensor,
                        empty_embeds: torch.Tensor, *, scales: GuidanceScales, autocast=nullcontext,
                        eps: float = 0.1, beta: float = 0.1) -> torch.Tensor:
    """The trainer's micro-step without accelerate: :func:`~editspecialists.training.trainer.micro_batch_loss`,
    the skip decision on a non-finite loss (one host sync, as in the trainer) and backward
    (gradients accumulate). Returns the loss.

    ``batch`` holds b inputs with G edits each, scored at ``step_index`` (b,); edits are ranked
    in index order.
    """
    inputs, nb_gen = batch.log_probs.shape[:2]
    order = torch.arange(nb_gen, device=step_index.device).expand(inputs, nb_gen)
    has_preference = torch.ones(inputs, dtype=torch.bool, device=step_index.device)
    loss, _, finite = micro_batch_loss(policy, scheduler, batch, step_index, empty_embeds, order, has_preference,
                                       scales=scales, eta=1.0, autocast=autocast, eps=eps, beta=beta)
    if not bool(finite):
        loss = zero_loss(policy)
    loss.backward()
    return loss.detach()


def optimizer_step(policy, optimizer, max_grad_norm: float = 1.0) -> None:
    """End of an accumulation window: clip the gradient norm, step, clear the gradients."""
    torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def make_optimizer(policy) -> torch.optim.Optimizer:
    """AdamW with the trainer's defaults (SPEC §5)."""
    return torch.optim.AdamW(policy.trainable_parameters(), lr=3e-5, betas=(0.9, 0.999),
                             weight_decay=1e-4, eps=1e-8)


# ---------------------------------------------------------------------------------- raw model calls
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


# ---------------------------------------------------------------------------------- memory
def process_peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class PeakMemory:
    """Peak memory of a block: CUDA max allocated (reset at entry), else the process RSS peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.megabytes = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.megabytes = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.megabytes = process_peak_rss_mb()
        return False


def parameter_megabytes(module: torch.nn.Module) -> float:
    unique = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() * p.element_size() for p in unique) / 2**20


# ---------------------------------------------------------------------------------- measurements
def measure_sampling(models: BenchModels, settings: BenchSettings) -> tuple[dict, Trajectories]:
    """Sampler, naive sampler and pure model time (steps UNet forwards + the final decode).

    Returns the figures and one sampled batch of trajectories (for training and feedback).
    """
    policy, scheduler, vae = models.policy, models.scheduler, models.pipe.vae
    steps, edits = settings.steps, settings.batch * settings.nb_gen
    common = dict(nb_gen=settings.nb_gen, scales=models.scales, autocast=models.autocast)
    unet_inputs = UNetBatch.like(models, 4 * edits, scheduler.timesteps[0])
    final_latents = torch.randn(edits, vae.config.latent_channels, *models.cond.image_latents.shape[2:],
                                device=models.device)

    def generator():
        return torch.Generator(models.device).manual_seed(settings.seed)

    def unet_steps():
        with torch.no_grad(), models.autocast():
            for _ in range(steps):
                unet_forward(policy.unet, unet_inputs)

    rounds = interleaved_rounds({
        "sampler": lambda: sample_edits(policy, scheduler, vae, models.cond, generator=generator(), **common),
        "naive": lambda: naive_sample_edits(policy, scheduler, vae, models.cond, generator=generator(),
                                            **common),
        "unet_steps": unet_steps,
        "decode": lambda: decode_latents(vae, final_latents),
    }, repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    with PeakMemory(models.device) as peak:
        trajectories = sample_edits(policy, scheduler, vae, models.cond, generator=generator(), **common)
    sampler_seconds = rounds.median("sampler")
    figures = {
        "unet_batch": 4 * edits,
        "sampler_seconds": sampler_seconds,
        "naive_seconds": rounds.median("naive"),
        "unet_forward_seconds": rounds.median("unet_steps") / steps,
        "vae_decode_seconds": rounds.median("decode"),
        "steps_images_per_s": steps * edits / sampler_seconds,
        "naive_steps_images_per_s": steps * edits / rounds.median("naive"),
        "efficiency": rounds.median_ratio(lambda s: s["unet_steps"] + s["decode"], "sampler"),
        "speedup_vs_naive": rounds.median_ratio(lambda s: s["naive"], "sampler"),
        "peak_memory_mb": peak.megabytes,
    }
    return figures, trajectories


def measure_training(models: BenchModels, settings: BenchSettings, trajectories: Trajectories) -> dict:
    """An accumulation window (``accumulation`` micro-steps, then the optimizer step) against pure
    model time (as many UNet forward+backward and reference forwards at the micro-step's shapes)."""
    policy, scheduler, window = models.policy, models.scheduler, settings.accumulation
    batch = trajectories.select(torch.arange(settings.train_batch, device=trajectories.latents.device))
    trainable = trajectories.trainable.nonzero().flatten()
    steps = [trainable[(torch.arange(settings.train_batch, device=trainable.device) + k) % len(trainable)]
             for k in range(window)]
    elements = 4 * settings.train_batch * settings.nb_gen
    unet_inputs = UNetBatch.like(models, elements, trajectories.timesteps[steps[0]].repeat_interleave(
        4 * settings.nb_gen))
    optimizer = make_optimizer(policy)
    policy.train()

    def accumulation_window():
        for step_index in steps:
            training_micro_step(policy, scheduler, batch, step_index, models.cond.empty_embeds,
                                scales=models.scales, autocast=models.autocast)
        optimizer_step(policy, optimizer)

    def forward_backward():
        with models.autocast():
            unet_forward_backward(policy, unet_inputs)

    def reference():
        with models.autocast():
            reference_forward(policy, unet_inputs)

    rounds = interleaved_rounds(
        {"window": accumulation_window, "forward_backward": forward_backward, "reference": reference},
        repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    with PeakMemory(models.device) as peak:
        accumulation_window()
    policy.eval()
    micro_step_seconds = rounds.median("window") / window
    return {
        "unet_batch": elements,
        "micro_step_seconds": micro_step_seconds,
        "unet_forward_backward_seconds": rounds.median("forward_backward"),
        "reference_forward_seconds": rounds.median("reference"),
        "transitions_per_s": settings.train_batch * settings.nb_gen / micro_step_seconds,
        "efficiency": rounds.median_ratio(lambda s: window * (s["forward_backward"] + s["reference"]),
                                          "window"),
        "peak_memory_mb": peak.megabytes,
    }


def measure_feedback(make_config: Callable[[], object], models: BenchModels, settings: BenchSettings,
                     edits: torch.Tensor) -> dict:
    """Edits scored per second by each score of the config's ``reward.weights`` (masks computed
    beforehand and timed separately as ``masks``: input and style images segmented per second).

    Also the speed-up of overlapping the feedback with sampling (:func:`measure_feedback_overlap`).
    ``make_config()`` returns the config naming the feedback models. Returns
    ``{"models": {name: {"seconds", "images_per_s"}}, "overlap_speedup": x, "skipped": ""}``; when
    the rewards package is missing or the feedback fails (a missing dependency or model, say),
    ``models`` is empty, ``overlap_speedup`` None and ``skipped`` says why, so that the other
    figures of a long run are still reported.
    """
    try:
        from editspecialists.rewards import build_scorer
    except ImportError as error:
        return {"models": {}, "overlap_speedup": None, "skipped": f"rewards package not available ({error})"}
    try:
        scorer = build_scorer(make_config(), models.device)
        return {"models": _time_feedback(scorer, models, settings, edits),
                "overlap_speedup": measure_feedback_overlap(scorer, models, settings), "skipped": ""}
    except Exception as error:  # noqa: BLE001 - reported in the table and the JSON
        return {"models": {}, "overlap_speedup": None, "skipped": f"feedback failed: {type(error).__name__}: {error}"}


def _time_feedback(scorer, models: BenchModels, settings: BenchSettings, edits: torch.Tensor) -> dict:
    from editspecialists.rewards.registry import whole_frame_mask_fn

    batch = scorer.make_batch(edits, models.inputs, models.styles)
    fns = {name: _inference(lambda fn=fn: fn(batch)) for name, fn in scorer.scores.items()}
    if scorer.mask_fn is not whole_frame_mask_fn:  # some score reads Grounded-SAM2 masks
        fns["masks"] = _inference(lambda: (scorer.mask_fn(batch.inputs, scorer.input_name),
                                           scorer.mask_fn(batch.styles, scorer.style_name)))
    _inference(lambda: (batch.input_masks, batch.style_masks))()
    rounds = interleaved_rounds(fns, repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    scored = {name: edits.shape[0] * edits.shape[1] for name in scorer.scores}
    scored["masks"] = 2 * edits.shape[0]
    return {name: {"seconds": rounds.median(name), "images_per_s": scored[name] / rounds.median(name)}
            for name in fns}


def measure_feedback_overlap(scorer, models: BenchModels, settings: BenchSettings, batches: int = 2) -> float:
    """Speed-up of sampling ``batches`` batches while the previous one is scored on a worker
    thread (:class:`~editspecialists.training.overlap.BackgroundScoring`, as the trainer on CUDA)
    over sampling and scoring them one after the other: serial time ÷ overlapped time."""
    from editspecialists.training.overlap import BackgroundScoring

    common = dict(nb_gen=settings.nb_gen, scales=models.scales, autocast=models.autocast)
    modes = {"serial": BackgroundScoring(scorer, models.device, enabled=False),
             "overlapped": BackgroundScoring(scorer, models.device, enabled=True)}

    def sample_and_score(scoring):
        generator = torch.Generator(models.device).manual_seed(settings.seed)
        for _ in range(batches):
            trajectories = sample_edits(models.policy, models.scheduler, models.pipe.vae, models.cond,
                                        generator=generator, **common)
            scoring.submit(trajectories.images, models.inputs, models.styles)
        return scoring.results()

    rounds = interleaved_rounds({name: lambda s=scoring: sample_and_score(s) for name, scoring in modes.items()},
                                repeats=settings.repeats, warmup=settings.warmup, device=models.device)
    for scoring in modes.values():
        scoring.close()
    return rounds.median_ratio(lambda s: s["serial"], "overlapped")


def _inference(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return fn()

    return run


def tiny_feedback_config(config, root: Path | None = None):
    """``config`` with every feedback model id pointed at the tiny random feedback models
    (:mod:`editspecialists.demo.feedback_standins`, built on first use): plumbing speed only."""
    from editspecialists.demo import feedback_standins

    feedback_standins.build_all(root)
    config = config.copy_and_resolve_references()
    config.models.update(feedback_standins.models_config(root))
    return config


# ---------------------------------------------------------------------------------- report
def machine_info(settings: BenchSettings) -> dict:
    """Device, library versions and thread count, recorded beside the figures."""
    import diffusers

    device = torch.device(settings.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
            "cpu_count": _cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_benchmark(settings: BenchSettings, feedback_config: Callable[[], object] | None = None,
                  command: str = "") -> dict:
    """Run every measurement and return the report (JSON-serialisable).

    ``feedback_config``: returns a full config whose ``reward``/``models`` name the feedback
    models (called only when the feedback is measured); None skips the feedback measurement.
    """
    settings = settings.resolved()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    models = load_models(settings)
    sampling, trajectories = measure_sampling(models, settings)
    training = measure_training(models, settings, trajectories)
    if settings.feedback and feedback_config is not None:
        feedback = measure_feedback(feedback_config, models, settings, trajectories.images)
    else:
        feedback = {"models": {}, "overlap_speedup": None, "skipped": "not requested"}
    memory = {
        "kind": "cuda_max_allocated" if models.device.type == "cuda" else "cpu_peak_rss",
        "sampling_peak_mb": sampling["peak_memory_mb"],
        "training_peak_mb": training["peak_memory_mb"],
        "peak_mb": max(sampling["peak_memory_mb"], training["peak_memory_mb"]),
        "unet_parameters_mb": parameter_megabytes(models.policy.unet),
        "policy_parameters_mb": parameter_megabytes(models.policy),
        "vae_text_encoder_parameters_mb": parameter_megabytes(models.pipe.vae)
        + parameter_megabytes(models.pipe.text_encoder),
    }
    return {
        "sampler_speedup_vs_naive": sampling["speedup_vs_naive"],
        "sampling_efficiency": sampling["efficiency"],
        "training_efficiency": training["efficiency"],
        "peak_memory_mb": memory["peak_mb"],
        "feedback_overlap_speedup": feedback["overlap_speedup"],
        "sampling": sampling,
        "training": training,
        "feedback": feedback,
        "memory": memory,
        "settings": asdict(settings),
        "machine": machine_info(settings),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def format_table(report: dict) -> str:
    """The report as an aligned two-column text table."""
    sampling, training, memory = report["sampling"], report["training"], report["memory"]
    settings, machine = report["settings"], report["machine"]
    rows = [
        ("model / device", f"{settings['model']} {settings['resolution']}px {settings['dtype']}"
                           f"{' channels-last' if settings['channels_last'] else ''} on "
                           f"{machine['device_name']} ({machine['threads']} threads)"),
        ("workload", f"{settings['steps']} steps, batch {settings['batch']}, nb_gen {settings['nb_gen']}, "
                     f"train batch {settings['train_batch']} x {settings['accumulation']} micro-steps, "
                     f"{settings['repeats']} repeats"),
        ("sampling steps x images / s", f"{sampling['steps_images_per_s']:.2f}"),
        ("naive sampler steps x images / s", f"{sampling['naive_steps_images_per_s']:.2f}"),
        ("sampler speed-up vs naive", f"{report['sampler_speedup_vs_naive']:.2f}x"),
        (f"UNet forward, batch {sampling['unet_batch']} (ms)",
         f"{1e3 * sampling['unet_forward_seconds']:.2f}"),
        ("sampling efficiency", f"{report['sampling_efficiency']:.3f}"),
        ("training transitions / s", f"{training['transitions_per_s']:.2f}"),
        (f"UNet fwd+bwd / ref fwd, batch {training['unet_batch']} (ms)",
         f"{1e3 * training['unet_forward_backward_seconds']:.2f} / "
         f"{1e3 * training['reference_forward_seconds']:.2f}"),
        ("training efficiency", f"{report['training_efficiency']:.3f}"),
    ]
    feedback = report["feedback"]
    rows += [(f"feedback {name} images / s", f"{value['images_per_s']:.2f}")
             for name, value in feedback["models"].items()]
    if feedback["overlap_speedup"] is not None:
        rows.append(("feedback overlapped with sampling, speed-up", f"{feedback['overlap_speedup']:.2f}x"))
    if feedback["skipped"]:
        rows.append(("feedback", f"skipped: {feedback['skipped']}"))
    rows += [
        (f"peak memory MB ({memory['kind']})",
         f"{memory['peak_mb']:.0f} (sampling {memory['sampling_peak_mb']:.0f}, "
         f"training {memory['training_peak_mb']:.0f})"),
        ("parameters MB: UNet / policy / VAE + text encoder",
         f"{memory['unet_parameters_mb']:.0f} / {memory['policy_parameters_mb']:.0f} / "
         f"{memory['vae_text_encoder_parameters_mb']:.0f}"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)
