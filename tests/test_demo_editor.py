"""The demo editor: supervised InstructPix2Pix pretraining of the tiny pipeline on the demo images."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from editspecialists.demo.images import write_demo_images
from editspecialists.demo.assets import demo_paths
from editspecialists.demo.editor import (
    car_mask,
    demo_training_images,
    image_tensor,
    pretrain_demo_editor,
    resize,
    torch_threads,
)

PROMPT = "turn the car into lego"


def pretrain_briefly(base: Path, out: Path, seed: int = 0, steps: int = 20):
    """A few seconds of pretraining; one thread, as the rest of the suite (no oversubscription)."""
    cars, walls = demo_training_images(num_cars=8, num_walls=4, seed=0)
    return pretrain_demo_editor(base, out, cars, walls, seed=seed, vae_steps=steps, vae_batch_size=8,
                                num_pairs=32, unet_steps=steps, unet_batch_size=8, num_threads=1)


def load_pipeline(folder: Path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for component in ("unet", "vae"):
        for name, tensor in load_file(folder / component / "diffusion_pytorch_model.safetensors").items():
            weights[f"{component}.{name}"] = tensor
    return weights


def test_car_mask_covers_the_car_only():
    cars, _ = demo_training_images(num_cars=4, num_walls=0)
    for car in cars:
        mask = car_mask(image_tensor(car))
        assert mask.shape == (1, 64, 64)
        assert mask[:, :, 0].sum() == 0
        assert 0.02 < mask.mean() < 0.3


def test_pretraining_lowers_losses_and_saves_a_loadable_pipeline(tiny_ip2p_path, tmp_path):
    report = pretrain_briefly(tiny_ip2p_path, tmp_path / "editor")

    assert np.mean(report.vae_losses[-5:]) < np.mean(report.vae_losses[:5])
    assert np.mean(report.unet_losses[-5:]) < np.mean(report.unet_losses[:5])
    assert np.isfinite(report.vae_reconstruction_mse)
    pipe = load_pipeline(tmp_path / "editor")
    assert pipe.vae.config.scaling_factor == pytest.approx(report.scaling_factor)
    image = Image.new("RGB", (32, 32), (120, 160, 200))
    edits = pipe(PROMPT, image=image, num_inference_steps=2, output_type="np").images
    assert edits.shape == (1, 32, 32, 3)
    assert np.isfinite(edits).all()


def test_same_seed_gives_identical_weights_whatever_the_callers_thread_count(tiny_ip2p_path, tmp_path):
    with torch_threads(2):
        pretrain_briefly(tiny_ip2p_path, tmp_path / "a", steps=3)
    with torch_threads(1):
        pretrain_briefly(tiny_ip2p_path, tmp_path / "b", steps=3)
    first, second = saved_weights(tmp_path / "a"), saved_weights(tmp_path / "b")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.slow
def test_demo_editor_edits_the_car_with_varied_brightness(demo_assets_root, tmp_path):
    """Edits sampled from one initial noise (different per-step noise) must differ in brightness
    and change the car far more than the background (pixels at least 2 px away from the car)."""
    pipe = load_pipeline(demo_paths(demo_assets_root)["policy"])
    inputs, _ = write_demo_images(tmp_path, num_inputs=4, num_styles=1)
    full = [Image.open(file).convert("RGB") for file in sorted(inputs.glob("*.png"))]
    images = [image.resize((32, 32), Image.BICUBIC) for image in full]
    masks = resize(torch.stack([car_mask(image_tensor(image)) for image in full]), 32)
    on_car = (masks[:, 0] > 0.5).numpy()
    background = (F.max_pool2d(masks, 5, stride=1, padding=2)[:, 0] == 0).numpy()
    initial = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    edits = np.stack([  # [samples, images, 32, 32, 3]
        pipe([PROMPT] * len(images), image=images, num_inference_steps=15, guidance_scale=7.5,
             image_guidance_scale=1.5, latents=initial.repeat(len(images), 1, 1, 1),
             generator=torch.Generator().manual_seed(sample), output_type="np").images
        for sample in range(8)
    ])
    change = ((edits - np.stack([np.asarray(image) / 255.0 for image in images])) ** 2).mean(axis=-1)

    assert edits.mean(axis=(2, 3, 4)).std(axis=0).mean() > 0.01
    assert change[:, on_car].mean() > 3 * change[:, background].mean()
