"""Patch embedders through their real loading paths: DreamSim (dreamsim package, offline tiny
cache), transformers DINOv2 and CLIP."""

import shutil
import socket

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel, Dinov2Model

from editspecialists.rewards.features import DreamSimPatches, HFPatches, load_patch_embedder
from editspecialists.demo.cache import cached_build
from editspecialists.demo.feedback_standins import IMAGENET_MEAN, IMAGENET_STD, build_clip, build_dinov2, build_dreamsim


@pytest.fixture(scope="module")
def folders(tiny_root):
    return {role: str(cached_build(tiny_root / role, build))
            for role, build in (("dreamsim", build_dreamsim), ("dinov2", build_dinov2), ("clip", build_clip))}


@pytest.fixture(scope="module")
def dreamsim(folders):
    return load_patch_embedder("dreamsim", folders["dreamsim"], device="cpu")


@pytest.fixture
def images():
    return torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))


def test_dreamsim_gives_normalised_patch_tokens_on_a_16x16_grid(dreamsim, images):
    tokens, grid = dreamsim(images)
    assert isinstance(dreamsim, DreamSimPatches)
    assert grid == (16, 16) and tokens.shape == (3, 256, 16) and tokens.dtype == torch.float32
    # DreamSim centres and L2-normalises every token
    assert tokens.mean(-1).abs().max().item() < 1e-5
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(3, 256), atol=1e-5)
    assert tokens.std(dim=1).mean().item() > 1e-2  # patches differ from each other


def test_dreamsim_batched_equals_one_by_one(dreamsim, images):
    batched, _ = dreamsim(images)
    singles = torch.cat([dreamsim(image[None])[0] for image in images])
    assert torch.allclose(batched, singles, atol=1e-5)


def test_dreamsim_lora_adapter_is_really_applied(dreamsim, images):
    with_adapter, _ = dreamsim(images)
    with dreamsim.model.disable_adapter():
        without_adapter, _ = dreamsim(images)
    assert (with_adapter - without_adapter).abs().max().item() > 1e-3


def test_dreamsim_variant_name_with_cache_dir_loads_the_same_model_and_restores_torch_hub(folders, dreamsim, images):
    hub_dir = torch.hub.get_dir()
    by_variant = load_patch_embedder("dreamsim", "dinov2_vitb14", device="cpu", cache_dir=folders["dreamsim"])
    assert torch.hub.get_dir() == hub_dir
    assert torch.equal(by_variant(images)[0], dreamsim(images)[0])


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to reach the network (a name lookup or a connection) fails and is recorded;
    offline mode on, as ``HF_HUB_OFFLINE=1`` sets it."""
    from huggingface_hub import constants

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return attempts


def test_dreamsim_loads_offline_from_its_folder_without_any_network_call(folders, dreamsim, images, tmp_path,
                                                                         no_network):
    """The folder download_repos.sh fills (models.dreamsim_cache) and a folder given as the id;
    torch.hub reads the backbone's repository cached there instead of asking GitHub for its branch."""
    cache = shutil.copytree(folders["dreamsim"], tmp_path / "dreamsim")
    by_variant = DreamSimPatches.from_pretrained("dinov2_vitb14", cache_dir=str(cache))
    by_folder = DreamSimPatches.from_pretrained(str(cache))
    assert no_network == []
    assert torch.equal(by_variant(images)[0], dreamsim(images)[0])
    assert torch.equal(by_folder(images)[0], dreamsim(images)[0])


def test_dreamsim_offline_with_files_missing_names_them_and_the_download_command(folders, tmp_path, no_network):
    cache = shutil.copytree(folders["dreamsim"], tmp_path / "dreamsim")
    (cache / "checkpoints" / "dinov2_vitb14_pretrain.pth").unlink()
    with pytest.raises(FileNotFoundError) as caught:
        DreamSimPatches.from_pretrained("dinov2_vitb14", cache_dir=str(cache))
    assert str(caught.value) == (
        f"DreamSim dinov2_vitb14: {cache} lacks checkpoints/dinov2_vitb14_pretrain.pth and HF_HUB_OFFLINE=1 forbids "
        f"downloading them: run bash download_repos.sh on a machine online (it fills models.dreamsim_cache; "
        f"--dreamsim-cache DIR fills another folder) or unset HF_HUB_OFFLINE")
    assert no_network == []


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def resize_normalise(images, side, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The whole image resized to ``side × side`` (no crop), then normalised."""
    pixels = F.interpolate(images, size=(side, side), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_dinov2_tokens_drop_cls_on_an_18x18_grid(folders, images):
    embedder = load_patch_embedder("dinov2", folders["dinov2"], device="cpu")
    tokens, grid = embedder(images)
    assert isinstance(embedder, HFPatches) and grid == (18, 18) and tokens.shape == (3, 324, 32)
    model = Dinov2Model.from_pretrained(folders["dinov2"]).eval()
    with torch.no_grad():
        expected = model(pixel_values=resize_normalise(images, 18 * 8)).last_hidden_state[:, 1:]
    assert torch.allclose(tokens, expected, atol=1e-5)


def test_dinov2_grid_is_configurable(folders, images):
    tokens, grid = load_patch_embedder("dinov2", folders["dinov2"], device="cpu", grid=4)(images)
    assert grid == (4, 4) and tokens.shape == (3, 16, 32)


def test_clip_tokens_are_projected_like_clip_image_embeddings(folders, images):
    embedder = load_patch_embedder("clip", folders["clip"], device="cpu")
    tokens, grid = embedder(images)
    assert grid == (4, 4) and tokens.shape == (3, 16, 16)  # 32 px / patch 8; projection dim 16
    clip = CLIPModel.from_pretrained(folders["clip"]).eval()
    pixels = resize_normalise(images, 32, CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        all_tokens = embedder.model(pixels)
        image_embedding = clip.get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(all_tokens[:, 1:], tokens, atol=1e-5)
    assert torch.allclose(all_tokens[:, 0], image_embedding, atol=1e-5)  # CLS token = CLIP's image embedding


def test_unknown_kinds_and_architectures_are_refused(tiny_root, folders):
    with pytest.raises(ValueError, match="unknown patch embedder 'vgg'"):
        load_patch_embedder("vgg", folders["dinov2"])
    from editspecialists.demo.feedback_standins import build_depth

    depth = str(cached_build(tiny_root / "depth", build_depth))
    with pytest.raises(ValueError, match="dinov2 or clip"):
        HFPatches.from_pretrained(depth)


def test_embedders_refuse_images_outside_the_unit_range(dreamsim, images):
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        dreamsim(images - 0.5)


def test_dreamsim_input_is_the_originals_within_its_8_bit_rounding():
    """The original fed DreamSim ``Resize((224, 224), BICUBIC)`` + ``ToTensor`` of a PIL image
    (``ToPILImage``, 8 bits): Pillow's antialiased bicubic on 8-bit pixels. Ours is torch's
    antialiased bicubic (the same kernel) on the float pixels: on a smooth 8-bit photo-like image
    they differ by at most about one 8-bit level, with no bias."""
    from torchvision import transforms as T

    from editspecialists.rewards.images import resize

    coarse = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    image = (F.interpolate(coarse, size=(256, 256), mode="bicubic").clamp(0, 1) * 255).round() / 255
    original = T.Compose([T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])(
        T.ToPILImage()(image[0]))
    difference = resize(image, (224, 224))[0] - original
    assert difference.abs().max() <= 1.5 / 255 and abs(difference.mean()) < 0.05 / 255
