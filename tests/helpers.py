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


def tiny_brightness_config(tiny_ip2p_path, data_dir: Path, logdir: Path, **overrides):
    """The demo brightness preset on the tiny random pipeline and given demo images: seconds per epoch."""
    from editspecialists.demo.images import write_demo_images

    inputs, styles = write_demo_images(data_dir, size=32)
    config = load_config("demo", "brightness")
    config.demo_root = ""
    config.pretrained.model = str(tiny_ip2p_path)
    config.inputimg_dir, config.styleimg_dir = str(inputs), str(styles)
    config.logdir = str(logdir)
    config.run_name = "run"
    config.num_epochs = 2
    config.sample.num_steps = 4
    config.sample.batch_size = 2
    config.sample.num_batches_per_epoch = 2
    config.train.batch_size = 1
    config.train.gradient_accumulation_steps = 2
    config.train.timestep_fraction = 0.5
    config.val.every = 0  # no held-out validation unless a test asks (tests/test_validation_runs.py)
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


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
