"""Every default model at its real size, with random weights, saved in its real on-disk layout.

Each ``build_<role>(folder)`` writes what production loads by id or folder, with the real
architecture sizes (hard-coded below, each with its source) and random weights, so the production
loaders and forward passes run at the real parameter counts and input sizes without any download
(``tests/test_real_size.py``; later the benchmark's real-size feedback). Preprocessing settings
and file layouts are those of the stand-ins (:mod:`editspecialists.demo.feedback_standins`), at
the real image sizes. Tokenizers have the real vocabulary sizes: the CLIP BPE is the real one
(open_clip ships it), the BERT WordPiece vocabulary is synthetic (30522 tokens, special tokens at
their real ids).

Sources: the hub config files collected in ``tests/fixtures/hub`` (see its ``SOURCES.md``), the
official ``sam2`` package's ``sam2_hiera_l.yaml`` for Hiera-L, open_clip's bundled
``ViT-H-14`` config (equal to HPSv2's copy) and ImageReward's ``med_config.json``. Where a hub file
was not found, the sizes come from the documented architecture, never from a library default.

A real-size build takes from seconds (DreamSim's ViT-B/14) to about a minute (the SD-1.5
pipeline) on a 2-core CPU and writes 0.3-4 GB per model.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch

from editspecialists.demo import feedback_standins as standins
from editspecialists.rewards.features import DREAMSIM_VARIANT, torch_hub_dir

# ---------------------------------------------------------------------------------- InstructPix2Pix
# timbrooks/instruct-pix2pix unet/config.json (re-saved copy, architecture keys); keys that copy
# lacks (sample_size, up_block_types, use_linear_projection, upcast_attention) are SD-1.5's.
IP2P_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": False, "upcast_attention": False,
}
# timbrooks/instruct-pix2pix vae/config.json (re-saved copy; identical to SD-1.5's VAE).
IP2P_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "sample_size": 512, "scaling_factor": 0.18215, "force_upcast": True,
}
# timbrooks/instruct-pix2pix scheduler/scheduler_config.json, verbatim (no timestep_spacing key).
IP2P_SCHEDULER = {
    "_class_name": "EulerAncestralDiscreteScheduler", "_diffusers_version": "0.12.0.dev0",
    "algorithm_type": "dpmsolver++", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "dynamic_thresholding_ratio": 0.995, "lower_order_final": True,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "solver_order": 2, "solver_type": "midpoint", "steps_offset": 1,
    "thresholding": False, "trained_betas": None,
}
# IP2P's text_encoder/config.json was not found: the text tower of openai/clip-vit-large-patch14
# (its config.json key fields), which SD-1.5 and InstructPix2Pix use.
CLIP_L14_TEXT = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
    "dropout": 0.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
# openai/clip-vit-large-patch14 config.json, vision key fields.
CLIP_L14_VISION = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 224, "hidden_act": "quick_gelu", "projection_dim": 768, "dropout": 0.0,
}
CLIP_L14_PROJECTION = 768
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K config.json key fields (PickScore_v1 is a fine-tuned
# CLIP-H, config not found). The vision activation is not among the key fields: GELU, as in
# open_clip's ViT-H-14 (no quick_gelu) from which the LAION weights come.
CLIP_H14_TEXT = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "layer_norm_eps": 1e-05,
    "projection_dim": 1024, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
CLIP_H14_VISION = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 224, "hidden_act": "gelu", "projection_dim": 1024,
}
CLIP_H14_PROJECTION = 1024
PICKSCORE_PROCESSOR = "laion"  # sub-folder of the PickScore build holding the LAION processor repo
CLIP_IMAGE_SIZE = 224  # openai/clip-vit-large-patch14 preprocessor_config.json (size, crop_size)
CLIP_TOKENIZER = {  # the SD-1.5 / CLIP tokenizer's special tokens and context length
    "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>", "model_max_length": 77,
}

# ---------------------------------------------------------------------------------- feedback models
# IDEA-Research/grounding-dino-tiny config.json (verbatim head; text_config is {"model_type":
# "bert"} there, i.e. BERT-base; the Swin keys not listed are Swin-T's: embed_dim 96, window 7).
GROUNDING_DINO_TINY = {
    "activation_function": "relu", "backbone_config": {
        "model_type": "swin", "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
        "out_features": ["stage2", "stage3", "stage4"], "out_indices": [2, 3, 4],
    },
    "d_model": 256, "decoder_attention_heads": 8, "decoder_bbox_embed_share": True, "decoder_ffn_dim": 2048,
    "decoder_layers": 6, "decoder_n_points": 4, "embedding_init_target": True, "encoder_attention_heads": 8,
    "encoder_ffn_dim": 2048, "encoder_layers": 6, "encoder_n_points": 4, "layer_norm_eps": 1e-05,
    "max_text_len": 256, "num_feature_levels": 4, "num_queries": 900, "position_embedding_type": "sine",
    "positional_embedding_temperature": 20, "query_dim": 4, "text_config": {"model_type": "bert"},
}
GROUNDING_DINO_SIZE = {"shortest_edge": 800, "longest_edge": 1333}  # its preprocessor_config.json
BERT_VOCAB_SIZE = 30522  # bert-base-uncased (Grounding DINO's text encoder, ImageReward's tokenizer)
# Hiera-L of facebook/sam2(.1)-hiera-large: sam2 1.1.0's sam2_hiera_l.yaml (embed_dim 144,
# num_heads 2, stages [2, 6, 36, 4], global_att_blocks [23, 33, 43], window_spec [8, 4, 16, 8],
# window_pos_embed_bkg_spatial_size [7, 7]); dims and heads double at each stage (Hiera's
# dim_mul = head_mul = 2.0); FPN neck d_model 256 on channels [1152, 576, 288, 144], image 1024.
HIERA_L = {
    "hidden_size": 144, "num_attention_heads": 2, "blocks_per_stage": [2, 6, 36, 4],
    "embed_dim_per_stage": [144, 288, 576, 1152], "num_attention_heads_per_stage": [2, 4, 8, 16],
    "window_size_per_stage": [8, 4, 16, 8], "global_attention_blocks": [23, 33, 43],
    "window_positional_embedding_background_size": [7, 7], "image_size": 1024,
}
SAM2_NECK = {"backbone_channel_list": [1152, 576, 288, 144], "fpn_hidden_size": 256, "fpn_top_down_levels": [2, 3]}
SAM2_IMAGE_SIZE = 1024
SAM2_MASK_SIZE = 256  # low-resolution masks (reference conversion's mask_size; SAM2's 4x downsampling)
# depth-anything/Depth-Anything-V2-Large-hf config.json.
DEPTH_ANYTHING_LARGE = {
    "backbone_config": {
        "model_type": "dinov2", "hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 24,
        "image_size": 518, "patch_size": 14, "reshape_hidden_states": False,
        "out_features": ["stage5", "stage12", "stage18", "stage24"], "out_indices": [5, 12, 18, 24],
    },
    "fusion_hidden_size": 256, "head_hidden_size": 32, "head_in_index": -1, "neck_hidden_sizes": [256, 512, 1024, 1024],
    "patch_size": 14, "reassemble_factors": [4, 2, 1, 0.5], "reassemble_hidden_size": 1024,
}
DEPTH_ANYTHING_SIZE = 518  # its preprocessor_config.json
# facebook/dinov2-large config.json (sizes from a re-save of it; key layout of dinov2-base's file).
DINOV2_LARGE = {
    "hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 24, "mlp_ratio": 4, "image_size": 518,
    "patch_size": 14, "layer_norm_eps": 1e-06, "layerscale_value": 1.0, "qkv_bias": True, "use_swiglu_ffn": False,
}
# DreamSim's dinov2_vitb14 backbone (torch.hub facebookresearch/dinov2): DINOv2 ViT-B/14 at 518 px
# with layer scale, built as timm's port of the same architecture (timm is a dreamsim dependency).
DREAMSIM_BACKBONE_TIMM = "vit_base_patch14_dinov2"
# The adapter's rank is not among the facts; it adds ~0.3 % to the backbone whatever its value.
DREAMSIM_LORA_RANK = 16

# ---------------------------------------------------------------------------------- evaluation models
HPS_ARCHITECTURE = "ViT-H-14"  # open_clip's config, equal to HPSv2's ViT-H-14.json
HPS_CHECKPOINT = "HPS_v2.1_compressed.pt"  # xswu/HPSv2 file name; {"state_dict": ...}
# ImageReward's med_config.json (THUDM/ImageReward GitHub train/src/config/med_config.json); the
# vision encoder is ImageReward's hard-coded ViT-L/16 at 224 px (the scorer's defaults).
IMAGE_REWARD_MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 768,
    "add_cross_attention": True,
}
IMAGE_REWARD_EMBED_DIM = 256  # BLIP's contrastive projections (vision_proj / text_proj) in ImageReward.pt

DREAMSIM_HUBCONF = '''"""Real-size stand-in for facebookresearch/dinov2 (written by editspecialists.demo.realsize)."""
import os

import torch

dependencies = ["torch", "timm"]


def dinov2_vitb14(**kwargs):
    import timm

    model = timm.create_model("{architecture}", pretrained=False, dynamic_img_size=True)
    weights = os.path.join(torch.hub.get_dir(), "checkpoints", "{weights}")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model
'''


# ---------------------------------------------------------------------------------- tokenizers
def clip_tokenizer():
    """The real CLIP BPE tokenizer (49408 tokens): open_clip's bundled merges, ids as in CLIP's vocab."""
    from open_clip.tokenizer import default_bpe
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # CLIP keeps 48894 merges
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, **CLIP_TOKENIZER)


def bert_tokenizer(**settings):
    """An uncased WordPiece tokenizer of BERT's size: the stand-ins' vocabulary (special tokens and
    ``.``/``?`` at BERT's ids, letters) filled up to 30522 tokens."""
    from transformers import BertTokenizer

    vocab = standins.tiny_bert_vocab()
    vocab.update({f"[unused{i}]": i for i in range(len(vocab), BERT_VOCAB_SIZE)})
    return BertTokenizer(vocab=vocab, **settings)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------- builders
def build_ip2p(folder: Path, seed: int = 0) -> dict[str, int]:
    """InstructPix2Pix: SD-1.5 UNet (8 input channels), VAE, CLIP-L text encoder and tokenizer,
    the real scheduler config. Returns the parameter counts ``{unet, vae, text_encoder}``."""
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=AutoencoderKL(**IP2P_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT)),
        tokenizer=clip_tokenizer(), unet=UNet2DConditionModel(**IP2P_UNET),
        scheduler=EulerAncestralDiscreteScheduler.from_config(IP2P_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    standins.write_json(Path(folder) / "scheduler" / "scheduler_config.json", IP2P_SCHEDULER)
    return {name: parameter_count(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}


def build_detector(folder: Path, seed: int = 0) -> dict[str, int]:
    """Grounding DINO tiny (Swin-T, BERT-base, 900 queries) with its processor at 800/1333 px."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig(**GROUNDING_DINO_TINY))
    model.save_pretrained(folder)
    processor = GroundingDinoImageProcessor(**standins.GROUNDING_DINO_PREPROCESSING, size=GROUNDING_DINO_SIZE)
    processor.save_pretrained(folder)
    bert_tokenizer(**standins.GROUNDING_DINO_TOKENIZER).save_pretrained(folder)
    for file_name in ("preprocessor_config.json", "tokenizer_config.json"):
        standins.mark_processor_class(folder, file_name, "GroundingDinoProcessor")
    return {"detector": parameter_count(model)}


def sam2_large_config():
    """``sam2_video`` config of SAM 2 Hiera-L (prompt encoder, mask decoder and memory modules at
    the library's sizes, which are SAM 2's for every trunk size)."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig

    vision = Sam2VisionConfig(backbone_config=Sam2HieraDetConfig(**HIERA_L), **SAM2_NECK)
    return Sam2VideoConfig(vision_config=vision, image_size=SAM2_IMAGE_SIZE, **standins.SAM2_LARGE_SWITCHES)


def build_segmenter(folder: Path, seed: int = 0) -> dict[str, int]:
    """SAM 2 Hiera-L saved as published (``Sam2VideoModel``, ``sam2_video``) with the image and
    video preprocessor configs and the ``Sam2VideoProcessor`` processor config, 1024 px."""
    from transformers import Sam2ImageProcessor, Sam2VideoModel, Sam2VideoVideoProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    model = Sam2VideoModel(sam2_large_config())
    model.save_pretrained(folder)
    size = {"height": SAM2_IMAGE_SIZE, "width": SAM2_IMAGE_SIZE}
    mask_size = {"height": SAM2_MASK_SIZE, "width": SAM2_MASK_SIZE}
    Sam2ImageProcessor(**standins.SAM2_PREPROCESSING, size=size, mask_size=mask_size).save_pretrained(folder)
    Sam2VideoVideoProcessor(**standins.SAM2_PREPROCESSING, size=size, mask_size=mask_size).save_pretrained(folder)
    standins.write_json(folder / "processor_config.json", {**standins.SAM2_PROCESSOR, "target_size": SAM2_IMAGE_SIZE})
    return {"segmenter": parameter_count(model)}


def build_depth(folder: Path, seed: int = 0) -> dict[str, int]:
    """Depth-Anything-V2 Large (DINOv2-L backbone, DPT head) with its DPT processor at 518 px."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(DepthAnythingConfig(**DEPTH_ANYTHING_LARGE))
    model.save_pretrained(folder)
    size = {"height": DEPTH_ANYTHING_SIZE, "width": DEPTH_ANYTHING_SIZE}
    DPTImageProcessor(**standins.DEPTH_ANYTHING_PREPROCESSING, size=size).save_pretrained(folder)
    return {"depth": parameter_count(model)}


def build_dinov2(folder: Path, seed: int = 0) -> dict[str, int]:
    """``facebook/dinov2-large`` (ViT-L/14) with its image processor."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**DINOV2_LARGE))
    model.save_pretrained(folder)
    BitImageProcessor(**standins.DINOV2_PREPROCESSING).save_pretrained(folder)
    return {"dino": parameter_count(model)}


def clip_model(text: dict, vision: dict, projection_dim: int):
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))


def write_clip_processor(folder: Path) -> None:
    """CLIP processor files as the hub repos hold them: the real tokenizer and the legacy 224 px
    feature-extractor ``preprocessor_config.json``."""
    clip_tokenizer().save_pretrained(folder)
    feature_extractor = standins.legacy_clip_feature_extractor(CLIP_IMAGE_SIZE)
    standins.write_json(Path(folder) / "preprocessor_config.json", feature_extractor)


def build_clip(folder: Path, seed: int = 0) -> dict[str, int]:
    """``openai/clip-vit-large-patch14`` (CLIP ViT-L/14, 224 px) with its processor."""
    torch.manual_seed(seed)
    model = clip_model(CLIP_L14_TEXT, CLIP_L14_VISION, CLIP_L14_PROJECTION)
    model.save_pretrained(folder)
    write_clip_processor(folder)
    return {"clip": parameter_count(model)}


def build_pickscore(folder: Path, seed: int = 0) -> dict[str, int]:
    """PickScore v1 (CLIP ViT-H/14) in ``folder``; in ``folder/laion`` the processor repo
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` without its weights: ``config.json`` (which tells
    ``AutoProcessor`` it is a CLIP repo) and the processor files."""
    torch.manual_seed(seed)
    model = clip_model(CLIP_H14_TEXT, CLIP_H14_VISION, CLIP_H14_PROJECTION)
    model.save_pretrained(folder)
    model.config.save_pretrained(Path(folder) / PICKSCORE_PROCESSOR)
    write_clip_processor(Path(folder) / PICKSCORE_PROCESSOR)
    return {"pickscore": parameter_count(model)}


def build_hps(folder: Path, seed: int = 0) -> dict[str, int]:
    """HPSv2.1: open_clip ViT-H-14 weights as ``{"state_dict": ...}`` in ``HPS_v2.1_compressed.pt``."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(HPS_ARCHITECTURE, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, folder / HPS_CHECKPOINT)
    return {"hps": parameter_count(model)}


def build_image_reward(folder: Path, seed: int = 0) -> dict[str, int]:
    """ImageReward v1.0 (BLIP ViT-L/16 + BERT-base cross-attending to it + reward head):
    ``ImageReward.pt`` with the official extra entries, ``med_config.json`` and a BERT tokenizer."""
    from editspecialists.demo.evaluation_standins import official_layout_extras
    from editspecialists.evaluation.image_reward import (CHECKPOINT_FILE, MED_CONFIG_FILE, ImageRewardModel,
                                                         read_configs)

    folder = Path(folder)
    torch.manual_seed(seed)
    bert_tokenizer(do_lower_case=True).save_pretrained(folder)
    standins.write_json(folder / MED_CONFIG_FILE, IMAGE_REWARD_MED_CONFIG)
    model = ImageRewardModel(*read_configs(folder / MED_CONFIG_FILE))
    extras = official_layout_extras(model, IMAGE_REWARD_EMBED_DIM)
    torch.save({**model.state_dict(), **extras}, folder / CHECKPOINT_FILE)
    return {"imagereward": parameter_count(model)}


def build_dreamsim(folder: Path, seed: int = 0) -> dict[str, int]:
    """A DreamSim cache folder with the real-size ``dinov2_vitb14`` backbone in the torch.hub
    layout (``facebookresearch_dinov2_main/hubconf.py`` + ``checkpoints/dinov2_vitb14_pretrain.pth``)
    and a ``dinov2_vitb14_patch_lora`` adapter made by DreamSim's own model (random LoRA weights)."""
    import timm
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    folder = Path(folder)
    repo = folder / standins.DREAMSIM_HUB_REPO
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(DREAMSIM_HUBCONF.format(architecture=DREAMSIM_BACKBONE_TIMM,
                                                              weights=standins.DREAMSIM_BACKBONE_FILE))
    torch.manual_seed(seed)
    backbone = timm.create_model(DREAMSIM_BACKBONE_TIMM, pretrained=False, dynamic_img_size=True)
    (folder / "checkpoints").mkdir()
    torch.save(backbone.state_dict(), folder / "checkpoints" / standins.DREAMSIM_BACKBONE_FILE)
    shutil.copy(folder / "checkpoints" / standins.DREAMSIM_BACKBONE_FILE, folder / standins.DREAMSIM_BACKBONE_FILE)
    with torch_hub_dir(str(folder)):
        model = PerceptualModel(**dreamsim_args["model_config"][f"{DREAMSIM_VARIANT}_patch"], device="cpu",
                                load_dir=str(folder), normalize_embeds=True)
    lora = LoraConfig(r=DREAMSIM_LORA_RANK, lora_alpha=DREAMSIM_LORA_RANK, lora_dropout=0.0, bias="none",
                      target_modules=["qkv"])
    model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    model.save_pretrained(folder / f"{DREAMSIM_VARIANT}_patch_lora")
    return {"dreamsim_backbone": parameter_count(backbone)}


BUILDERS = {
    "ip2p": build_ip2p,
    "detector": build_detector,
    "segmenter": build_segmenter,
    "depth": build_depth,
    "dreamsim": build_dreamsim,
    "clip": build_clip,
    "dino": build_dinov2,
    "hps": build_hps,
    "pickscore": build_pickscore,
    "imagereward": build_image_reward,
}


def models_config(root: Path) -> dict[str, str]:
    """Config ``models`` entries pointing every default feedback and evaluation model at its
    real-size build under ``root/<role>`` (the layout of :data:`BUILDERS`; nothing is built). The
    policy's folder is ``root/"ip2p"``."""
    root = Path(root)
    folder = {role: str(root / role) for role in BUILDERS}
    return {
        "detector": folder["detector"], "segmenter": folder["segmenter"], "depth": folder["depth"],
        "dreamsim": folder["dreamsim"], "dreamsim_cache": folder["dreamsim"],
        "clip": folder["clip"], "dino": folder["dino"],
        "hps_architecture": HPS_ARCHITECTURE, "hps_checkpoint": str(root / "hps" / HPS_CHECKPOINT),
        "pickscore": folder["pickscore"], "pickscore_processor": str(root / "pickscore" / PICKSCORE_PROCESSOR),
        "imagereward": folder["imagereward"], "imagereward_tokenizer": folder["imagereward"],
    }
