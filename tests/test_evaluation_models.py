"""HPSv2.1, PickScore and ImageReward scorers on tiny random models saved to and loaded from disk."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editspecialists.evaluation import metrics
from editspecialists.evaluation.embedders import ClipEmbedder, OpenClipEmbedder
from editspecialists.evaluation.image_reward import (
    CHECKPOINT_FILE,
    MED_CONFIG_FILE,
    ImageRewardModel,
    ImageRewardScorer,
    TextConfig,
    VisionConfig,
    load_reward_state_dict,
    read_configs,
)
from editspecialists.demo import evaluation_standins

PROMPTS = ["car made out of lego", "a photo of a dog"]


@pytest.fixture(scope="module")
def eval_models(tiny_root):
    return evaluation_standins.build_all(tiny_root)


@pytest.fixture
def images():
    return torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))


def _assert_prompt_dependent(score, images):
    same_image = images[:1].expand(2, -1, -1, -1)
    values = score(same_image, PROMPTS)
    assert torch.isfinite(values).all() and values.shape == (2,)
    assert abs(values[0] - values[1]) > 1e-4


def test_hps_scores_are_finite_and_prompt_dependent(eval_models, images):
    hps = OpenClipEmbedder.from_checkpoint(eval_models["hps_architecture"], eval_models["hps_checkpoint"])
    _assert_prompt_dependent(lambda x, p: metrics.hps_score(hps.embed_images(x), hps.embed_texts(p)), images)


def test_hps_loads_the_checkpoint_weights(eval_models):
    hps = OpenClipEmbedder.from_checkpoint(eval_models["hps_architecture"], eval_models["hps_checkpoint"])
    saved = torch.load(eval_models["hps_checkpoint"], weights_only=True)["state_dict"]
    for key in ("visual.conv1.weight", "token_embedding.weight", "text_projection"):
        assert torch.equal(hps.model.state_dict()[key], saved[key])


def test_pickscore_is_finite_prompt_dependent_and_reads_unit_range_images_once(eval_models, images):
    pick = ClipEmbedder.from_pretrained(eval_models["pickscore"], eval_models["pickscore_processor"])
    _assert_prompt_dependent(lambda x, p: metrics.pick_score(pick.embed_images(x), pick.embed_texts(p), pick.logit_scale), images)
    # The processor's own path on uint8 PIL images (rescale by 1/255 once) gives the same embedding,
    # up to uint8 vs float resizing; a second division by 255 (a near-black image) would not.
    pil = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in images]
    quantised = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255).permute(2, 0, 1) for p in pil])
    reference = pick.processor(images=pil, return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = torch.nn.functional.normalize(pick.model.get_image_features(pixel_values=reference).pooler_output, dim=-1)
    assert torch.allclose(pick.embed_images(quantised), expected, atol=5e-3)
    assert not torch.allclose(pick.embed_images(quantised / 255), expected, atol=5e-2)


@pytest.fixture(scope="module")
def image_reward(eval_models):
    return ImageRewardScorer.from_pretrained(eval_models["imagereward"], eval_models["imagereward_tokenizer"])


def test_image_reward_is_finite_and_prompt_dependent(image_reward, images):
    _assert_prompt_dependent(image_reward, images)


def test_image_reward_mixed_prompts_in_one_batch_equal_per_item_scoring(image_reward, images):
    batched = image_reward(images, PROMPTS)
    single = torch.cat([image_reward(images[i : i + 1], [PROMPTS[i]]) for i in range(2)])
    assert torch.allclose(batched, single, atol=1e-5)
    swapped = image_reward(images, PROMPTS[::-1])
    assert not torch.allclose(batched, swapped, atol=1e-4)


def test_image_reward_rejects_mismatched_prompts(image_reward, images):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        image_reward(images, PROMPTS[:1])


def test_image_reward_module_layout_matches_the_official_checkpoint():
    """Key names and shapes of ImageReward v1.0 (BLIP ViT-L/16 + BERT-base with cross-attention +
    the 768-1024-128-64-16-1 head), built on the meta device from the official med_config sizes."""
    text = TextConfig(vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512)
    with torch.device("meta"):
        state = ImageRewardModel(VisionConfig(), text).state_dict()
    expected = {
        "blip.visual_encoder.cls_token": (1, 1, 1024),
        "blip.visual_encoder.pos_embed": (1, 197, 1024),
        "blip.visual_encoder.patch_embed.proj.weight": (1024, 3, 16, 16),
        "blip.visual_encoder.blocks.23.attn.qkv.weight": (3072, 1024),
        "blip.visual_encoder.blocks.23.mlp.fc2.weight": (1024, 4096),
        "blip.visual_encoder.norm.bias": (1024,),
        "blip.text_encoder.embeddings.word_embeddings.weight": (30524, 768),
        "blip.text_encoder.embeddings.LayerNorm.weight": (768,),
        "blip.text_encoder.encoder.layer.11.attention.self.query.weight": (768, 768),
        "blip.text_encoder.encoder.layer.11.crossattention.self.key.weight": (768, 1024),
        "blip.text_encoder.encoder.layer.11.crossattention.output.LayerNorm.bias": (768,),
        "blip.text_encoder.encoder.layer.11.intermediate.dense.weight": (3072, 768),
        "blip.text_encoder.encoder.layer.11.output.dense.weight": (768, 3072),
        "mlp.layers.0.weight": (1024, 768),
        "mlp.layers.2.weight": (128, 1024),
        "mlp.layers.4.weight": (64, 128),
        "mlp.layers.6.weight": (16, 64),
        "mlp.layers.7.weight": (1, 16),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("blip.text_encoder.embeddings.token_type") for k in state)
    assert len(state) == (4 + 24 * 12 + 2) + (4 + 12 * 26) + 10  # vision + text + head


def test_image_reward_loading_fails_loudly_on_a_missing_key(eval_models, tmp_path):
    folder = Path(eval_models["imagereward"])
    state = torch.load(folder / CHECKPOINT_FILE, weights_only=True)
    del state["mlp.layers.7.bias"]
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    model = ImageRewardModel(*read_configs(folder / MED_CONFIG_FILE))
    with pytest.raises(RuntimeError, match="mlp.layers.7.bias"):
        load_reward_state_dict(model, tmp_path / CHECKPOINT_FILE)


def test_pickscore_reads_its_processor_from_the_separate_laion_repo(eval_models):
    assert eval_models["pickscore_processor"] != eval_models["pickscore"]
    assert not (Path(eval_models["pickscore_processor"]) / "model_index.json").exists()
    pick = ClipEmbedder.from_pretrained(eval_models["pickscore"], eval_models["pickscore_processor"])
    assert type(pick.processor).__name__ == "CLIPProcessor"
    assert type(pick.processor.tokenizer).__name__ == "CLIPTokenizer" and pick.processor.tokenizer.model_max_length == 77


def test_clip_loads_the_published_legacy_feature_extractor_file(tiny_root, tmp_path):
    """openai/clip-vit-large-patch14's ``preprocessor_config.json`` is a ``CLIPFeatureExtractor``
    file (integer sizes, no ``do_rescale``): it must load as the 224 px bicubic CLIP processor."""
    import shutil

    from editspecialists.demo.feedback_standins import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, build_clip
    from editspecialists.demo.cache import cached_build

    folder = tmp_path / "clip"
    shutil.copytree(cached_build(tiny_root / "clip", build_clip), folder)
    shutil.copy(Path(__file__).parent / "fixtures" / "hub" / "openai__clip-vit-large-patch14" /
                "preprocessor_config.json", folder)
    processor = ClipEmbedder.from_pretrained(str(folder)).processor.image_processor
    assert type(processor).__name__ == "CLIPImageProcessor"
    assert (processor.size["shortest_edge"], processor.crop_size["height"], processor.crop_size["width"]) == (224, 224, 224)
    assert (int(processor.resample), processor.do_rescale, processor.do_center_crop) == (3, True, True)
    assert (list(processor.image_mean), list(processor.image_std)) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    pixels = processor(images=[torch.rand(3, 48, 64)], do_rescale=False, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 224, 224)


def test_image_reward_tokenizer_resolves_like_bert_base_uncased(eval_models):
    """bert-base-uncased's tokenizer_config.json names no class: AutoTokenizer takes it from
    config.json. The scorer gets a lower-casing BERT WordPiece tokenizer of length 512."""
    scorer = ImageRewardScorer.from_pretrained(eval_models["imagereward"], eval_models["imagereward_tokenizer"])
    tokenizer = scorer.tokenizer
    assert type(tokenizer).__name__ == "BertTokenizer" and tokenizer.model_max_length == 512
    assert tokenizer("A Car").input_ids == evaluation_standins.tiny_bert_tokenizer()("a car").input_ids
    assert not (Path(eval_models["imagereward"]) / "tokenizer_config.json").exists()  # as THUDM/ImageReward
