"""Tiny feedback models: layout, determinism, and loading through the production code."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editspecialists.demo import feedback_standins
from tests.helpers import demo_scenes


@pytest.fixture(scope="module")
def built(tiny_root):
    return feedback_standins.build_all(tiny_root)


def test_build_all_returns_every_role_folder_with_its_files(built, tiny_root):
    assert set(built) == {"detector", "segmenter", "depth", "dinov2", "clip", "dreamsim"}
    for role, folder in built.items():
        assert Path(folder) == tiny_root / role
    for role in ("detector", "segmenter", "depth", "dinov2", "clip"):
        assert (Path(built[role]) / "config.json").is_file() and (Path(built[role]) / "model.safetensors").is_file()
    dreamsim = Path(built["dreamsim"])
    assert (dreamsim / "dinov2_vitb14_pretrain.pth").is_file()
    assert (dreamsim / "checkpoints" / "dinov2_vitb14_pretrain.pth").is_file()
    assert (dreamsim / "facebookresearch_dinov2_main" / "hubconf.py").is_file()
    adapter = json.loads((dreamsim / "dinov2_vitb14_patch_lora" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["qkv"] and adapter["r"] == 4


def test_the_dreamsim_adapter_config_is_short_and_loads_without_a_warning(built):
    """Only DreamSim's keys and PEFT's non-defaults, as in DreamSim's release checkpoints: a cache built
    with the newest PEFT loads without warnings in the oldest that setup.py admits (CI runs both)."""
    import warnings

    from peft import LoraConfig

    adapter = Path(built["dreamsim"]) / "dinov2_vitb14_patch_lora"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert set(saved) == {"auto_mapping", "bias", "inference_mode", "lora_alpha", "lora_dropout", "peft_type", "r",
                          "target_modules"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = LoraConfig.from_pretrained(str(adapter))
    assert (config.r, config.lora_alpha, config.target_modules) == (4, 4, {"qkv"})


def test_build_all_reuses_the_cache(built, tiny_root):
    stamp = (Path(built["depth"]) / "model.safetensors").stat().st_mtime_ns
    assert feedback_standins.build_all(tiny_root) == built
    assert (Path(built["depth"]) / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_bert_vocab_keeps_grounding_dino_special_ids():
    vocab = feedback_standins.tiny_bert_vocab()
    assert len(vocab) == 1030 and sorted(vocab.values()) == list(range(1030))
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", "?")] == [0, 100, 101, 102, 1012, 1029]


@pytest.mark.parametrize("builder", [feedback_standins.build_depth, feedback_standins.build_detector,
                                     feedback_standins.build_segmenter])
def test_builds_are_seeded(builder, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        builder(tmp_path / name, seed=seed, steps=3)  # a few training steps: they must be seeded too
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any(not torch.equal(a[key], c[key]) for key in a)


def test_dreamsim_build_is_seeded(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        feedback_standins.build_dreamsim(tmp_path / name, seed=0, steps=3)
    backbone = [torch.load(tmp_path / n / "checkpoints" / "dinov2_vitb14_pretrain.pth") for n in "ab"]
    adapters = [load_file(tmp_path / n / "dinov2_vitb14_patch_lora" / "adapter_model.safetensors") for n in "ab"]
    for first, second in (backbone, adapters):
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any("lora_B" in key and key.endswith("weight") and adapters[0][key].abs().max() > 0 for key in adapters[0])


def test_tiny_vit_refuses_a_grid_it_has_no_positions_for():
    model = feedback_standins.TinyDinoViT(grid=4)
    assert model(torch.rand(2, 3, 56, 56)).shape == (2, 16)
    with pytest.raises(ValueError, match="expects 16 patches, got 25"):
        model(torch.rand(1, 3, 70, 70))


def test_segmenter_is_saved_as_published_and_masks_load_its_image_model(built):
    """The stand-in is a ``sam2_video`` repo like ``facebook/sam2.1-hiera-large``; ``AutoModel``
    would load its video model, whose forward needs a video session. The mask predictor loads
    the image model and processor and segments boxes."""
    from editspecialists.rewards.masks import MaskPredictor

    folder = Path(built["segmenter"])
    assert json.loads((folder / "config.json").read_text())["model_type"] == "sam2_video"
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == "Sam2VideoProcessor"
    predictor = MaskPredictor.from_pretrained(built["detector"], built["segmenter"], box_threshold=0.0)
    assert type(predictor.segmenter).__name__ == "Sam2Model"
    assert type(predictor.segmenter_processor).__name__ == "Sam2Processor"
    assert predictor.segmenter_processor.target_size == feedback_standins.SEGMENTER_IMAGE_SIZE
    scenes, _ = demo_scenes(2, 48, 80)  # the trained stand-in's domain (on noise it may fill the frame)
    result = predictor(scenes, "car")
    assert result.masks.shape == (2, 48, 80) and result.masks.dtype == torch.bool
    assert not result.fallback.any()
    assert 0 < result.masks.float().mean() < 1  # SAM's masks, not a whole-frame fallback


def test_detector_with_the_real_preprocessor_file_resizes_to_800_and_at_most_1333(built, tmp_path):
    """Grounding DINO's published preprocessing (short side 800, long side at most 1333, padded)."""
    import shutil

    from editspecialists.rewards.masks import MaskPredictor

    folder = tmp_path / "detector"
    shutil.copytree(built["detector"], folder)
    shutil.copy(Path(__file__).parent / "fixtures" / "hub" / "IDEA-Research__grounding-dino-tiny" /
                "preprocessor_config.json", folder)
    predictor = MaskPredictor.from_pretrained(str(folder), built["segmenter"], box_threshold=0.0)
    images = [torch.rand(3, 40, 100), torch.rand(3, 60, 60)]
    inputs = predictor.detector_processor(images=images, text=["car.", "car."], do_rescale=False, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 800, 1333)  # 40×100 → 533×1333, 60×60 → 800×800, padded
    assert inputs["input_ids"].shape[0] == 2
