"""The FLUX.1 Kontext path against the InstructPix2Pix path at the same workload (``--backbones``):
sampling and one training accumulation window through the trainer's own functions, the weights
each holds, peak memory on a GPU, and the ratios Kontext / InstructPix2Pix."""

from __future__ import annotations

from pathlib import Path

import torch

from editspecialists.benchmarks.measuring import interleaved_rounds
from editspecialists.benchmarks.models import BenchModels, load_models
from editspecialists.benchmarks.settings import BenchSettings
from editspecialists.benchmarks.training import accumulation_window
from editspecialists.demo.cache import default_cache_root
from editspecialists.demo.kontext_standin import tiny_kontext
from editspecialists.demo.policy_standin import tiny_ip2p
from editspecialists.diffusion.bundle import EditModelSpec
from editspecialists.diffusion.pipeline import FLOW_SDE, FLUX_KONTEXT, INSTRUCT_PIX2PIX
from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.sampler import sample_edits
from editspecialists.memory import PeakMemory, parameter_megabytes

# Each family's tiny stand-in, sampler and guidance (the Kontext pipeline's distilled 2.5).
PATHS = {
    INSTRUCT_PIX2PIX: lambda root: EditModelSpec(str(tiny_ip2p(root))),
    FLUX_KONTEXT: lambda root: EditModelSpec(str(tiny_kontext(root)), scheduler=FLOW_SDE, family=FLUX_KONTEXT,
                                             scales=GuidanceScales(text=2.5)),
}
KONTEXT_ETA = 0.7  # the flow SDE's noise level (config/kontext.py)


def measure_path(models: BenchModels, settings: BenchSettings, eta: float) -> dict:
    """Sampling (``steps`` × edits per second) and one accumulation window of one edit model, its
    weights (MB) and, on a GPU, the peak memory of each."""
    def sample():
        generator = torch.Generator(models.device).manual_seed(settings.seed)
        return sample_edits(models.policy, models.scheduler, models.vae, models.cond, nb_gen=settings.nb_gen,
                            scales=models.scales, eta=eta, generator=generator, autocast=models.autocast)

    with PeakMemory(models.device) as sampling_peak:
        trajectories = sample()
    window = accumulation_window(models, settings, trajectories)
    rounds = interleaved_rounds({"sampler": sample, "window": window}, repeats=settings.repeats,
                                warmup=settings.warmup, device=models.device)
    with PeakMemory(models.device) as training_peak:
        window()
    models.policy.eval()
    on_gpu = models.device.type == "cuda"
    return {
        "sampler_seconds": rounds.median("sampler"),
        "steps_images_per_s": settings.steps * settings.batch * settings.nb_gen / rounds.median("sampler"),
        "micro_step_seconds": rounds.median("window") / settings.accumulation,
        "policy_mb": parameter_megabytes(models.policy),
        "trainable_mb": sum(p.numel() * p.element_size() for p in models.policy.trainable_parameters()) / 2**20,
        "frozen_encoders_mb": sum(parameter_megabytes(module) for module in frozen_encoders(models)),
        "sampling_peak_mb": sampling_peak.megabytes if on_gpu else None,
        "training_peak_mb": training_peak.megabytes if on_gpu else None,
    }


def frozen_encoders(models: BenchModels) -> list[torch.nn.Module]:
    """The VAE and text encoder(s) around the policy (Kontext: CLIP and T5)."""
    pipe = getattr(models.model, "pipe", None)
    return [models.vae, models.model.text_encoder] + ([pipe.text_encoder_2] if pipe is not None else [])


def compare_backbones(settings: BenchSettings) -> dict:
    """Both paths at ``settings``' workload (its model size ignored: each family's tiny stand-in;
    the resolution must be a multiple of 16), each figure and its Kontext / IP2P ratio."""
    settings = settings.resolved()
    if settings.resolution % 16:
        raise ValueError(f"resolution {settings.resolution} must be a multiple of 16 for FLUX Kontext "
                         f"(2x2 patches of 8x8 pixel blocks)")
    torch.set_num_threads(settings.threads)
    root = Path(settings.cache) if settings.cache else default_cache_root()
    figures = {}
    for family, spec in PATHS.items():
        torch.manual_seed(settings.seed)
        models = load_models(settings, spec(root))
        figures[family] = measure_path(models, settings, KONTEXT_ETA if family == FLUX_KONTEXT else 1.0)
    base, kontext = figures[INSTRUCT_PIX2PIX], figures[FLUX_KONTEXT]
    ratios = {key: kontext[key] / base[key] for key in base if base[key] and kontext[key] is not None}
    return {"paths": figures, "kontext_over_ip2p": ratios,
            "workload": {key: getattr(settings, key) for key in
                         ("resolution", "steps", "batch", "nb_gen", "train_batch", "accumulation", "dtype",
                          "device", "threads", "repeats")}}


def format_backbones_table(report: dict) -> str:
    """The comparison as an aligned text table (one row per figure: IP2P, Kontext, ratio)."""
    base, kontext = report["paths"][INSTRUCT_PIX2PIX], report["paths"][FLUX_KONTEXT]
    ratios = report["kontext_over_ip2p"]
    lines = [f"{'figure':<22}{'instruct_pix2pix':>18}{'flux_kontext':>16}{'ratio':>9}"]
    for key, value in base.items():
        if value is None:
            continue
        ratio = f"{ratios[key]:.2f}x" if key in ratios else "-"
        lines.append(f"{key:<22}{value:>18.4g}{kontext[key]:>16.4g}{ratio:>9}")
    workload = ", ".join(f"{key} {value}" for key, value in report["workload"].items())
    return "\n".join(lines + [f"workload: {workload}"])
