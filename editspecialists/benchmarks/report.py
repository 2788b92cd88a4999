"""The benchmark run: every measurement in turn, gathered into a JSON-serialisable report with the
machine it ran on, and that report as a text table."""

from __future__ import annotations

import datetime
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from editspecialists.benchmarks.feedback import measure_feedback
from editspecialists.memory import parameter_megabytes
from editspecialists.benchmarks.models import BenchModels, load_models
from editspecialists.benchmarks.sampling import measure_sampling
from editspecialists.benchmarks.settings import BenchSettings
from editspecialists.benchmarks.training import measure_training


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
        feedback = {"models": {}, "resident_mb": None, "constants_speedup": None, "overlap_speedup": None,
                    "skipped": "not requested"}
    memory = memory_figures(models, sampling, training, feedback["resident_mb"])
    return {
        "sampler_speedup_vs_naive": sampling["speedup_vs_naive"],
        "sampling_efficiency": sampling["efficiency"],
        "training_efficiency": training["efficiency"],
        "peak_memory_mb": memory["peak_mb"],
        "feedback_overlap_speedup": feedback["overlap_speedup"],
        "feedback_speedup_constants": feedback["constants_speedup"],
        "sampling": sampling,
        "training": training,
        "feedback": feedback,
        "memory": memory,
        "settings": asdict(settings),
        "machine": machine_info(settings),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def run_feedback_benchmark(settings: BenchSettings, feedback_config: Callable[[], object], command: str = "") -> dict:
    """The feedback measurement alone (``--only_feedback``): random edits ``(batch, nb_gen, 3, R, R)``
    of the random inputs, scored by the feedback models of ``feedback_config()`` (no sampling, no
    training, no overlap): throughput per model and the per-image constants' speed-up, for
    feedback models too slow on a CPU for a whole benchmark (``--feedback=realsize``)."""
    settings = settings.resolved()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    models = load_models(settings)
    edits = torch.rand(settings.batch, settings.nb_gen, 3, settings.resolution, settings.resolution,
                       generator=torch.Generator().manual_seed(settings.seed)).to(models.device)
    feedback = measure_feedback(feedback_config, models, settings, edits, overlap=False)
    return {
        "feedback_speedup_constants": feedback["constants_speedup"],
        "feedback": feedback,
        "settings": asdict(settings),
        "machine": machine_info(settings),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def format_feedback_table(report: dict) -> str:
    """A feedback-only report (:func:`run_feedback_benchmark`) as a two-column text table."""
    settings, machine, feedback = report["settings"], report["machine"], report["feedback"]
    rows = [("device", f"{machine['device_name']} ({machine['threads']} threads)"),
            ("edits scored per call", f"batch {settings['batch']} x nb_gen {settings['nb_gen']} at "
                                      f"{settings['resolution']} px, {settings['repeats']} rounds")]
    rows += feedback_rows(feedback)
    return aligned(rows)


def feedback_rows(feedback: dict) -> list[tuple[str, str]]:
    """The table rows of a feedback measurement."""
    rows = [(f"feedback {name} images / s", f"{value['images_per_s']:.2f}") for name, value in feedback["models"].items()]
    if feedback["constants_speedup"] is not None:
        rows.append(("feedback with per-image constants, speed-up", f"{feedback['constants_speedup']:.2f}x"))
    if feedback["overlap_speedup"] is not None:
        rows.append(("feedback overlapped with sampling, speed-up", f"{feedback['overlap_speedup']:.2f}x"))
    if feedback["skipped"]:
        rows.append(("feedback", f"skipped: {feedback['skipped']}"))
    return rows


def aligned(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def memory_figures(models: BenchModels, sampling: dict, training: dict, feedback_resident_mb: float | None) -> dict:
    """Peak memory of the sampling and training phases (MB, measured without feedback models on
    the device, as with ``reward.offload``), the same with the feedback models resident (their
    measured size added; CUDA only) and the parameter sizes (MB)."""
    resident = feedback_resident_mb or 0.0
    return {
        "feedback_resident_mb": feedback_resident_mb,
        "training_peak_mb_feedback_resident": training["peak_memory_mb"] + resident if feedback_resident_mb else None,
        "kind": "cuda_max_allocated" if models.device.type == "cuda" else "cpu_peak_rss",
        "sampling_peak_mb": sampling["peak_memory_mb"],
        "training_peak_mb": training["peak_memory_mb"],
        "peak_mb": max(sampling["peak_memory_mb"], training["peak_memory_mb"]),
        "unet_parameters_mb": parameter_megabytes(models.policy.unet),
        "policy_parameters_mb": parameter_megabytes(models.policy),
        "vae_text_encoder_parameters_mb": parameter_megabytes(models.vae)
        + parameter_megabytes(models.model.text_encoder),
    }


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
    rows += feedback_rows(report["feedback"])
    if memory["feedback_resident_mb"]:
        rows.append(("feedback models resident MB; training peak with them / offloaded",
                     f"{memory['feedback_resident_mb']:.0f}; {memory['training_peak_mb_feedback_resident']:.0f} / "
                     f"{memory['training_peak_mb']:.0f}"))
    rows += [
        (f"peak memory MB ({memory['kind']})",
         f"{memory['peak_mb']:.0f} (sampling {memory['sampling_peak_mb']:.0f}, "
         f"training {memory['training_peak_mb']:.0f})"),
        ("parameters MB: UNet / policy / VAE + text encoder",
         f"{memory['unet_parameters_mb']:.0f} / {memory['policy_parameters_mb']:.0f} / "
         f"{memory['vae_text_encoder_parameters_mb']:.0f}"),
    ]
    return aligned(rows)
