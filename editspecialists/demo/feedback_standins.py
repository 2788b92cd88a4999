"""Tiny AI-feedback models (docs/method.md §4), saved in their real on-disk layouts; the four the demo's
scores read are trained briefly to mean what their names say in the demo's image domain.

Each ``build_<role>(folder)`` writes what production loads by id, so tests and the demo go
through exactly the production loading code:

- ``detector``: Grounding DINO, ``preprocessor_config.json`` and BERT tokenizer files, as
  ``IDEA-Research/grounding-dino-tiny``. Trained: finds the demo's car (prompt "car") and brick
  wall ("lego") above the default thresholds, and neither under the other's name.
- ``segmenter``: SAM2 as ``facebook/sam2(.1)-hiera-large`` publish it: a ``sam2_video`` model
  with ``Sam2VideoProcessor`` files. Trained: masks the car from its box, a wall from the
  whole-image box.
- ``depth``: Depth Anything + DPT image processor, as ``depth-anything/Depth-Anything-V2-*-hf``.
  Trained: predicts the scene depth of demo scenes and of their edits (depth follows shape, not
  texture).
- ``dinov2``: ``Dinov2Model`` + ``BitImageProcessor``, as ``facebook/dinov2-*`` (random).
- ``clip``: ``CLIPModel`` + byte-level CLIP tokenizer + legacy feature-extractor file, as
  ``openai/clip-vit-large-patch14`` (random).
- ``dreamsim``: a DreamSim cache folder that the real ``dreamsim`` package loads offline. DreamSim
  checks its cache for ``dinov2_vitb14_pretrain.pth`` and ``dinov2_vitb14_patch_lora/`` (a PEFT
  adapter), then builds its backbone with ``torch.hub.load("facebookresearch/dinov2",
  "dinov2_vitb14")`` using the cache folder as torch-hub directory. Offline, torch.hub falls back
  to the cached repository ``facebookresearch_dinov2_main/``; ours holds a ``hubconf.py`` whose
  ``dinov2_vitb14`` entry point builds :class:`TinyDinoViT` (12 blocks: DreamSim reads block 11)
  and loads its weights from ``checkpoints/dinov2_vitb14_pretrain.pth``, where torch.hub caches
  the real weights. The LoRA adapter is made by the dreamsim package itself (its
  ``PerceptualModel`` on the tiny backbone). Trained through the adapter: brick patches lie near
  brick patches whatever their colours, away from the car and the background.

The training (:mod:`editspecialists.demo.feedback_training`, settings in :data:`TRAINING`) runs on
generated demo scenes whose ground truth the drawing gives; ``tests/test_feedback_competence.py``
measures each model on scenes it was not trained on. Each keeps the real repo's classes and
preprocessing settings (the constants below; the files and their sources are in
``tests/fixtures/hub``); only widths, depths and image sizes shrink. Builds are seeded and run on
one thread (identical files for identical seeds); the random ones take seconds, the trained ones
15-40 s each, with a progress bar.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from editspecialists.demo import feedback_training as training
from editspecialists.demo.cache import cached_build, default_cache_root
from editspecialists.demo.fitting import torch_threads
from editspecialists.rewards.features import DREAMSIM_VARIANT, torch_hub_dir
from editspecialists.demo.policy_standin import byte_level_clip_tokenizer, tiny_clip_text_config

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
RESCALE_1_255 = 0.00392156862745098

# The real repos' preprocessing (tests/fixtures/hub holds the files and their sources). Only the
# image sizes of the stand-ins shrink; tests/test_standin_identity.py checks the rest.
GROUNDING_DINO_PREPROCESSING = {  # IDEA-Research/grounding-dino-tiny, size 800/1333
    "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True, "format": "coco_detection",
    "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "resample": 2, "rescale_factor": RESCALE_1_255,
}
GROUNDING_DINO_TOKENIZER = {
    "do_lower_case": True, "model_max_length": 512, "strip_accents": None, "tokenize_chinese_chars": True,
    "clean_up_tokenization_spaces": True,
}
# facebook/sam2(.1)-hiera-large: its preprocessor_config.json was not seen; these are the
# settings it shares with transformers' Sam2ImageProcessor defaults and the reference conversion
# (1024 px images, 256 px masks: library defaults).
SAM2_PREPROCESSING = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "resample": 2, "rescale_factor": RESCALE_1_255,
}
SAM2_PROCESSOR = {"point_pad_value": -10, "processor_class": "Sam2VideoProcessor"}  # target_size 1024
SAM2_LARGE_SWITCHES = {"enable_occlusion_spatial_embedding": False, "enable_temporal_pos_encoding_for_object_pointers": False}
SEGMENTER_IMAGE_SIZE = 64
CLIP_IMAGE_SIZE = 32
DEPTH_ANYTHING_PREPROCESSING = {  # depth-anything/Depth-Anything-V2-{Large,Small}-hf, size 518 x 518
    "do_normalize": True, "do_pad": False, "do_rescale": True, "do_resize": True, "ensure_multiple_of": 14,
    "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "keep_aspect_ratio": True, "resample": 3,
    "rescale_factor": RESCALE_1_255, "size_divisor": None,
}
DINOV2_PREPROCESSING = {  # facebook/dinov2-{base,large}, unchanged (the patch embedder resizes itself)
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD, "resample": 3, "rescale_factor": RESCALE_1_255, "size": {"shortest_edge": 256},
}


def legacy_clip_feature_extractor(size: int) -> dict:
    """``preprocessor_config.json`` of ``openai/clip-vit-large-patch14`` (legacy feature-extractor
    format: integer sizes, no ``do_rescale``), with ``size`` and ``crop_size`` (224 there) set to ``size``."""
    return {
        "crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD, "resample": 3, "size": size,
    }


def write_json(path: Path, settings: dict) -> None:
    """``settings`` as indented JSON with sorted keys (the hub files' style)."""
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
DREAMSIM_BACKBONE_FILE = f"{DREAMSIM_VARIANT}_pretrain.pth"
DREAMSIM_HUB_REPO = "facebookresearch_dinov2_main"
TINY_VIT_CONFIG = "tiny_vit.json"
DETECTOR_IMAGE_SIZE = 96
DEPTH_IMAGE_SIZE = 56  # 4 × 4 patches of 14 px
# Training of the stand-ins that carry meaning (15-55 s each on one CPU thread, about 2 min together;
# depth trains longest: it must tell bricks in the car's place from a brick wall in front of the scene).
TRAINING = {
    "detector": training.TrainingSettings(steps=200, batch_size=8, learning_rate=6e-3),
    "segmenter": training.TrainingSettings(steps=200, batch_size=16, learning_rate=3e-3),
    "depth": training.TrainingSettings(steps=750, batch_size=16, learning_rate=3e-3),
    "dreamsim": training.TrainingSettings(steps=200, batch_size=8, learning_rate=5e-3),
}
ROLES = ("detector", "segmenter", "depth", "dinov2", "clip", "dreamsim")

# Grounding DINO splits phrases on these hard-coded BERT ids, so the tiny vocabulary keeps them.
_BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def training_settings(role: str, steps: int | None) -> "training.TrainingSettings":
    """:data:`TRAINING`'s settings of ``role``, with ``steps`` instead of its steps if given."""
    settings = TRAINING[role]
    return settings if steps is None else replace(settings, steps=steps)


def tiny_bert_vocab() -> dict[str, int]:
    """1030 WordPiece tokens: BERT's special ids, lowercase letters (+ ``##`` forms), fillers."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = letters + ["##" + c for c in letters] + [",", "-"]
    vocab = dict(_BERT_SPECIAL_IDS)
    free = (i for i in range(1030) if i not in vocab.values())
    for word in words:
        vocab[word] = next(free)
    for index in free:
        vocab[f"[unused{index}]"] = index
    return vocab


def mark_processor_class(folder: Path, file_name: str, processor_class: str) -> None:
    """Add ``processor_class`` to a saved sub-processor config, as the real repos' files carry it
    (transformers 5 writes it only inside a combined ``processor_config.json``)."""
    path = folder / file_name
    write_json(path, {**json.loads(path.read_text()), "processor_class": processor_class})


def build_detector(folder: Path, seed: int = 0, steps: int | None = None) -> None:
    """Grounding DINO (Swin + 1-layer BERT, d_model 32) trained to find the demo's car and brick wall.

    Laid out with its processor as ``IDEA-Research/grounding-dino-tiny``:
    ``preprocessor_config.json`` and the tokenizer files, both naming ``GroundingDinoProcessor``;
    only the image size shrinks (800/1333 → 96).

    At 96 px the coarsest feature level keeps more than one pixel (2 × 2), which GroupNorm needs
    for a batch of one image. Training: :func:`~editspecialists.demo.feedback_training.train_detector`
    (``steps`` overrides :data:`TRAINING`'s, for quick builds in tests).
    """
    from transformers import (
        AutoProcessor,
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        SwinConfig,
    )

    with torch_threads(1):
        torch.manual_seed(seed)
        tokenizer = BertTokenizer(vocab=tiny_bert_vocab(), **GROUNDING_DINO_TOKENIZER)
        backbone = SwinConfig(
            image_size=DETECTOR_IMAGE_SIZE, embed_dim=8, depths=[1] * 4, num_heads=[1] * 4, window_size=7,
            out_indices=[2, 3, 4],
        )
        text = BertConfig(
            vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16
        )
        config = GroundingDinoConfig(
            backbone_config=backbone.to_dict(), text_config=text.to_dict(), d_model=32,
            encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=10, max_text_len=32,
            encoder_n_points=2, decoder_n_points=2,
        )
        model = GroundingDinoForObjectDetection(config)
        size = {"shortest_edge": DETECTOR_IMAGE_SIZE, "longest_edge": DETECTOR_IMAGE_SIZE}
        GroundingDinoImageProcessor(**GROUNDING_DINO_PREPROCESSING, size=size).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        for file_name in ("preprocessor_config.json", "tokenizer_config.json"):
            mark_processor_class(folder, file_name, "GroundingDinoProcessor")
        training.train_detector(model, AutoProcessor.from_pretrained(folder), training.training_examples(seed),
                                training_settings("detector", steps), torch.Generator().manual_seed(seed))
        model.save_pretrained(folder)


def tiny_sam2_video_config():
    """A ``sam2_video`` config (as ``facebook/sam2.1-hiera-large`` is published): Hiera 8→64
    channels, 64 px images, 16-wide prompt encoder, mask decoder and memory modules."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig
    from transformers.models.sam2_video import Sam2VideoMaskDecoderConfig, Sam2VideoPromptEncoderConfig

    hiera = Sam2HieraDetConfig(
        hidden_size=8, image_size=SEGMENTER_IMAGE_SIZE, blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1] * 4, global_attention_blocks=[3],
        window_size_per_stage=[4, 4, 4, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=16,
    )
    return Sam2VideoConfig(
        vision_config=vision,
        # config objects, not dicts: transformers 5.17 mixes up the two sub-configs given as dicts
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=16, image_size=SEGMENTER_IMAGE_SIZE, patch_size=16),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_attention_heads=2,
                                                       iou_head_hidden_dim=16),
        image_size=SEGMENTER_IMAGE_SIZE,
        memory_attention_hidden_size=16, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[4, 4], memory_encoder_hidden_size=16, memory_encoder_output_channels=8,
        mask_downsampler_embed_dim=16, memory_fuser_embed_dim=16, memory_fuser_intermediate_dim=32,
        **SAM2_LARGE_SWITCHES,
    )


def build_segmenter(folder: Path, seed: int = 0, steps: int | None = None) -> None:
    """SAM2 trained to mask the demo's car from its box, saved as published on the hub.

    A ``sam2_video`` model (``Sam2VideoModel``), with ``preprocessor_config.json``
    (``Sam2ImageProcessor``), ``video_preprocessor_config.json`` and the 3-key
    ``processor_config.json`` naming ``Sam2VideoProcessor``. Images shrink to 64 px
    (``target_size`` too), low-resolution masks to 16 px.

    Its image model (what :class:`~editspecialists.rewards.masks.MaskPredictor` loads) is trained
    to segment the demo's car from its box and a brick wall from the whole-image box
    (:func:`~editspecialists.demo.feedback_training.train_segmenter`; ``steps`` overrides
    :data:`TRAINING`'s); the video model's memory modules stay random.
    """
    from transformers import (AutoModelForMaskGeneration, Sam2ImageProcessor, Sam2Processor, Sam2VideoModel,
                              Sam2VideoVideoProcessor)

    with torch_threads(1):
        torch.manual_seed(seed)
        video_model = Sam2VideoModel(tiny_sam2_video_config())
        video_model.save_pretrained(folder)
        size = {"height": SEGMENTER_IMAGE_SIZE, "width": SEGMENTER_IMAGE_SIZE}
        mask_size = {"height": SEGMENTER_IMAGE_SIZE // 4, "width": SEGMENTER_IMAGE_SIZE // 4}
        Sam2ImageProcessor(**SAM2_PREPROCESSING, size=size, mask_size=mask_size).save_pretrained(folder)
        Sam2VideoVideoProcessor(**SAM2_PREPROCESSING, size=size, mask_size=mask_size).save_pretrained(folder)
        write_json(folder / "processor_config.json", {**SAM2_PROCESSOR, "target_size": SEGMENTER_IMAGE_SIZE})
        image_model = AutoModelForMaskGeneration.from_pretrained(folder)
        training.train_segmenter(image_model, Sam2Processor.from_pretrained(folder),
                                 training.training_examples(seed), training_settings("segmenter", steps),
                                 torch.Generator().manual_seed(seed))
        missing, unexpected = video_model.load_state_dict(image_model.state_dict(), strict=False)
        if unexpected:
            raise RuntimeError(f"SAM2 image model weights the video model lacks: {unexpected}")
        video_model.save_pretrained(folder)


def build_depth(folder: Path, seed: int = 0, steps: int | None = None) -> None:
    """Depth Anything (4-layer DINOv2 backbone, patch 14) trained to predict the demo scenes' depth.

    Saved with the real DPT image processor, its size shrunk from 518 to 56. Training:
    :func:`~editspecialists.demo.feedback_training.train_depth` (``steps`` overrides
    :data:`TRAINING`'s)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    from editspecialists.rewards.depth import DepthEstimator

    with torch_threads(1):
        torch.manual_seed(seed)
        backbone = Dinov2Config(
            hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, patch_size=14,
            image_size=DEPTH_IMAGE_SIZE, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
        )
        config = DepthAnythingConfig(
            backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16, 16, 16],
            fusion_hidden_size=16, head_hidden_size=8, initializer_range=0.15,  # depth of order 1 at first
        )
        DepthAnythingForDepthEstimation(config).save_pretrained(folder)
        size = {"height": DEPTH_IMAGE_SIZE, "width": DEPTH_IMAGE_SIZE}
        DPTImageProcessor(**DEPTH_ANYTHING_PREPROCESSING, size=size).save_pretrained(folder)
        estimator = DepthEstimator.from_pretrained(str(folder))
        training.train_depth(estimator, training.training_examples(seed), training_settings("depth", steps),
                             torch.Generator().manual_seed(seed))
        estimator.model.save_pretrained(folder)


def build_dinov2(folder: Path, seed: int = 0) -> None:
    """``Dinov2Model`` (hidden 32, 2 layers, patch 8) and the real ``BitImageProcessor`` settings."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=64
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(**DINOV2_PREPROCESSING).save_pretrained(folder)


def tiny_clip_model(vocab_size: int, image_size: int):
    """A ``CLIPModel`` with a 2-layer text and vision tower (width 32, patch 8), projection 16."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=8,
    )
    config = CLIPConfig(
        text_config=tiny_clip_text_config(vocab_size).to_dict(), vision_config=vision.to_dict(), projection_dim=16
    )
    return CLIPModel(config)


def write_clip_processor(folder: Path, image_size: int) -> None:
    """The CLIP processor files as the hub repos hold them: tokenizer files and a legacy
    feature-extractor ``preprocessor_config.json``."""
    byte_level_clip_tokenizer().save_pretrained(folder)
    write_json(folder / "preprocessor_config.json", legacy_clip_feature_extractor(image_size))


def build_clip(folder: Path, seed: int = 0) -> None:
    """``CLIPModel`` (32 px images) laid out as ``openai/clip-vit-large-patch14``."""
    torch.manual_seed(seed)
    tiny_clip_model(len(byte_level_clip_tokenizer().get_vocab()), CLIP_IMAGE_SIZE).save_pretrained(folder)
    write_clip_processor(folder, CLIP_IMAGE_SIZE)


class TinyPatchEmbed(nn.Module):
    """Non-overlapping patches → tokens ``(B, N, D)``; exposes ``patch_size`` and ``proj`` as DINO does."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class TinyAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection, as in DINO."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TinyBlock(nn.Module):
    """Pre-norm transformer block with DINO's module names (``attn.qkv`` is DreamSim's LoRA target)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TinyAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyDinoViT(nn.Module):
    """A ViT with DINOv2's interface as DreamSim uses it: ``patch_embed``, ``blocks``, CLS first.

    Position embeddings cover a fixed ``grid × grid`` patch grid (DreamSim feeds 224 px images,
    i.e. 16 × 16 patches of 14 px). Initialised for short training: CLS and position embeddings
    small (std 0.02), each block's output projections zero (DINOv2's LayerScale starts near zero
    too), so the blocks start near the identity.
    """

    def __init__(self, dim: int = 16, depth: int = 12, heads: int = 2, patch_size: int = 14, grid: int = 16):
        super().__init__()
        self.patch_embed = TinyPatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + grid * grid, dim))
        self.blocks = nn.ModuleList(TinyBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        for block in self.blocks:
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp[2].weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images → CLS token after the final norm ``(B, D)``."""
        patches = self.patch_embed(images)
        if patches.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(f"TinyDinoViT expects {self.pos_embed.shape[1] - 1} patches, got {patches.shape[1]}")
        x = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


HUBCONF = '''"""Tiny stand-in for facebookresearch/dinov2 (written by editspecialists.demo.feedback_standins)."""
import json
import os

import torch

dependencies = ["torch"]


def dinov2_vitb14(**kwargs):
    from editspecialists.demo.feedback_standins import TinyDinoViT

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "{config}")) as handle:
        model = TinyDinoViT(**json.load(handle))
    weights = os.path.join(torch.hub.get_dir(), "checkpoints", "{weights}")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model
'''


def write_tiny_dinov2_hub(folder: Path, seed: int) -> None:
    """``folder`` becomes a torch-hub directory holding the tiny ``facebookresearch/dinov2``."""
    repo = folder / DREAMSIM_HUB_REPO
    repo.mkdir(parents=True)
    config = {"dim": 16, "depth": 12, "heads": 2, "patch_size": 14, "grid": 16}
    (repo / TINY_VIT_CONFIG).write_text(json.dumps(config, indent=2))
    (repo / "hubconf.py").write_text(HUBCONF.format(config=TINY_VIT_CONFIG, weights=DREAMSIM_BACKBONE_FILE))
    torch.manual_seed(seed)
    weights = TinyDinoViT(**config).state_dict()
    (folder / "checkpoints").mkdir()
    torch.save(weights, folder / "checkpoints" / DREAMSIM_BACKBONE_FILE)
    shutil.copy(folder / "checkpoints" / DREAMSIM_BACKBONE_FILE, folder / DREAMSIM_BACKBONE_FILE)


def build_dreamsim(folder: Path, seed: int = 0, steps: int | None = None) -> None:
    """A DreamSim cache folder (tiny ``dinov2_vitb14`` patch model) trained to tell bricks apart.

    ``dreamsim`` loads it offline; brick patches lie near brick patches, away from cars and
    background.

    The adapter is produced by DreamSim's own ``PerceptualModel`` wrapped by PEFT, so its keys and
    config are those DreamSim expects. The model is then loaded as production loads it
    (:class:`~editspecialists.rewards.features.DreamSimPatches`) and trained through the adapter:
    backbone and LoRA weights together
    (:func:`~editspecialists.demo.feedback_training.train_patch_embedder`; ``steps`` overrides
    :data:`TRAINING`'s); the adapter is saved, then the backbone without it.
    """
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    from editspecialists.rewards.features import DreamSimPatches

    with torch_threads(1):
        write_tiny_dinov2_hub(folder, seed)
        with torch_hub_dir(str(folder)):
            model = PerceptualModel(
                **dreamsim_args["model_config"][f"{DREAMSIM_VARIANT}_patch"], device="cpu", load_dir=str(folder),
                normalize_embeds=True,
            )
        lora = LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, bias="none", target_modules=["qkv"])
        adapter = folder / f"{DREAMSIM_VARIANT}_patch_lora"
        get_peft_model(model, lora).save_pretrained(adapter)
        embedder = DreamSimPatches.from_pretrained(str(folder))
        training.train_patch_embedder(embedder, embedder.model, "feedback stand-in: dreamsim",
                                      training.training_examples(seed), training_settings("dreamsim", steps),
                                      torch.Generator().manual_seed(seed))
        embedder.model.save_pretrained(adapter)
        keep_adapter_config_short(adapter / "adapter_config.json")
        backbone = embedder.model.unload().extractor_list[0].model
        for path in (folder / "checkpoints" / DREAMSIM_BACKBONE_FILE, folder / DREAMSIM_BACKBONE_FILE):
            torch.save(backbone.state_dict(), path)


# The adapter_config.json keys DreamSim reads itself, besides PEFT's.
DREAMSIM_ADAPTER_KEYS = ("r", "lora_alpha", "lora_dropout", "bias", "target_modules")


def keep_adapter_config_short(path: Path) -> None:
    """Rewrite a LoRA ``adapter_config.json`` with DreamSim's keys and those whose values differ from
    PEFT's defaults, as the short files of DreamSim's release checkpoints are.

    PEFT writes every field it knows; an older PEFT (setup.py admits 0.18) warns about each field it
    does not know, at every load. The short file reads the same in every version.
    """
    from peft import LoraConfig

    defaults = json.loads(json.dumps(LoraConfig().to_dict(), default=str))
    saved = json.loads(path.read_text())
    kept = {key: value for key, value in saved.items()
            if key in DREAMSIM_ADAPTER_KEYS or key == "peft_type" or value != defaults.get(key)}
    path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")


BUILDERS = {
    "detector": build_detector,
    "segmenter": build_segmenter,
    "depth": build_depth,
    "dinov2": build_dinov2,
    "clip": build_clip,
    "dreamsim": build_dreamsim,
}


def models_config(root: Path | None = None) -> dict[str, str]:
    """Config ``models`` entries pointing every feedback model id at its tiny version under
    ``root`` (the :func:`build_all` layout; nothing is built here)."""
    root = Path(root) if root else default_cache_root()
    entries = {role: str(root / role) for role in ("detector", "segmenter", "depth", "clip")}
    entries.update(dreamsim=str(root / "dreamsim"), dreamsim_cache=str(root / "dreamsim"))
    entries.update(dino=str(root / "dinov2"), semantic_dinov2=str(root / "dinov2"))
    return entries


def build_all(root: Path | None = None) -> dict[str, str]:
    """Build (or reuse, file-locked) every tiny feedback model under ``root/<role>``.

    Returns ``{role: folder}`` for the roles of :data:`ROLES`.
    """
    root = Path(root) if root else default_cache_root()
    return {role: str(cached_build(root / role, BUILDERS[role])) for role in ROLES}
