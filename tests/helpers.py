"""Helpers shared by tests: loading config files by path, small training configs."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_config(name: str, preset: str | None = None):
    """``get_config`` of ``config/<name>.py`` (with ``preset`` when given)."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "config" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if preset is None else module.get_config(preset)


def tiny_brightness_settings(tiny_ip2p_path, data_dir: Path, logdir: Path, **overrides) -> dict:
    """{dotted config key: value} that make the demo brightness preset a run of seconds per epoch on
    the tiny random pipeline and given demo images (written here), ``overrides`` applied."""
    from editspecialists.demo.images import write_demo_images

    inputs, styles = write_demo_images(data_dir, size=32)
    return {"demo_root": "", "pretrained.model": str(tiny_ip2p_path), "inputimg_dir": str(inputs),
            "styleimg_dir": str(styles), "logdir": str(logdir), "run_name": "run", "num_epochs": 2,
            "sample.num_steps": 4, "sample.batch_size": 2, "sample.num_batches_per_epoch": 2,
            "train.batch_size": 1, "train.gradient_accumulation_steps": 2, "train.timestep_fraction": 0.5,
            "val.every": 0,  # no held-out validation unless a test asks (tests/test_validation_runs.py)
            **overrides}


def tiny_brightness_config(tiny_ip2p_path, data_dir: Path, logdir: Path, **overrides):
    """The demo brightness preset on the tiny random pipeline and given demo images: seconds per epoch."""
    config = load_config("demo", "brightness")
    for key, value in tiny_brightness_settings(tiny_ip2p_path, data_dir, logdir, **overrides).items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def tiny_brightness_args(tiny_ip2p_path, data_dir: Path, logdir: Path, **overrides) -> list[str]:
    """The command-line arguments of scripts/train.py (or generate.py) for
    :func:`tiny_brightness_config` with the same arguments."""
    settings = tiny_brightness_settings(tiny_ip2p_path, data_dir, logdir, **overrides)
    return [f"--config={REPO / 'config' / 'demo.py'}:brightness", *(f"--config.{k}={v}" for k, v in settings.items())]


def perturb_style_path(policy, scale=0.1):
    """Give the style path a real effect (the initial policy ignores it): non-zero conv_in style
    channels, perturbed cross-attention module weights, non-zero LoRA B matrices."""
    import torch

    with torch.no_grad():
        policy.unet.conv_in.weight[:, 8:].normal_(0, scale)
        for param in policy.style_module.parameters():
            param.add_(scale * torch.randn_like(param))
        for name, param in policy.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
