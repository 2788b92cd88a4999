"""Tiny, randomly initialised versions of the evaluation-only models (HPSv2, PickScore, ImageReward).

Each is written in the file layout of its real counterpart, so the evaluator loads it through the
production loading code: an open_clip model config (JSON, registered by path) plus a checkpoint for
HPSv2 (``HPS_v2.1_compressed.pt`` holding ``{"state_dict": ...}``); for PickScore a ``CLIPModel``
and, as the real setup reads it from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, a second CLIP
repo whose processor is used; ``ImageReward.pt`` + ``med_config.json`` (+ a BERT tokenizer) for
ImageReward.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from editspecialists.demo import feedback_standins
from editspecialists.demo.cache import cached_build, default_cache_root
from editspecialists.demo.policy_standin import byte_level_clip_tokenizer

HPS_ARCHITECTURE = "tiny-hps-vit"
HPS_CHECKPOINT = "HPS_v2.1_compressed.pt"  # the file name in xswu/HPSv2
IMAGE_SIZE = 32
PICKSCORE_PROCESSOR_FOLDER = "laion-clip-h"
IMAGE_REWARD_TOKENIZER_FOLDER = "bert-base-uncased"
# google-bert/bert-base-uncased's tokenizer_config.json, verbatim (no tokenizer_class: the class
# comes from config.json's model_type).
BERT_BASE_UNCASED_TOKENIZER_CONFIG = {"do_lower_case": True, "model_max_length": 512}


def tiny_hps_model_config() -> dict:
    """open_clip config of the ViT-H-14 family, shrunk; text vocab stays 49408 (bundled BPE ids)."""
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def build_tiny_hps(folder: Path, seed: int = 0) -> None:
    """Write ``tiny-hps-vit.json`` (open_clip model config) and its checkpoint :data:`HPS_CHECKPOINT`."""
    import open_clip

    config_path = folder / f"{HPS_ARCHITECTURE}.json"
    config_path.write_text(json.dumps(tiny_hps_model_config(), indent=2))
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(HPS_ARCHITECTURE, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, folder / HPS_CHECKPOINT)


def build_tiny_clip_repo(folder: Path, seed: int = 0) -> None:
    """A CLIP repo as PickScore's and LAION's CLIP-H are published: ``CLIPModel`` (32 px images)
    with its tokenizer and legacy feature-extractor ``preprocessor_config.json``. The LAION
    repo's preprocessor file was not seen; its sister repo ``laion/CLIP-ViT-g-14-laion2B-s12B-b42K``
    holds the OpenAI CLIP file, whose mean/std ``open_clip_config.json`` of CLIP-H confirms."""
    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer()
    feedback_standins.tiny_clip_model(len(tokenizer.get_vocab()), IMAGE_SIZE).save_pretrained(folder)
    feedback_standins.write_clip_processor(folder, IMAGE_SIZE)


def build_tiny_pickscore_processor(folder: Path) -> None:
    """The stand-in of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, where PickScore's processor lives."""
    build_tiny_clip_repo(folder, seed=1)


def tiny_bert_tokenizer():
    """WordPiece tokenizer over letters and digits (and their ``##`` continuations)."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = list(string.ascii_lowercase + string.digits)
    tokens = specials + characters + ["##" + c for c in characters] + [".", ","]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})


def build_tiny_bert_base_uncased(folder: Path) -> None:
    """The tokenizer repo ImageReward reads, laid out as ``google-bert/bert-base-uncased``:
    ``vocab.txt``, ``tokenizer.json``, its 2-key ``tokenizer_config.json`` and a ``config.json``
    (``bert``, ``BertForMaskedLM``; sizes shrunk) from which ``AutoTokenizer`` takes the class."""
    from transformers import BertConfig

    tokenizer = tiny_bert_tokenizer()
    tokenizer.save_pretrained(folder)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab))
    (folder / "tokenizer_config.json").write_text(json.dumps(BERT_BASE_UNCASED_TOKENIZER_CONFIG) + "\n")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, architectures=["BertForMaskedLM"])
    config.save_pretrained(folder)


def tiny_image_reward_med_config(vocab_size: int) -> dict:
    """``med_config.json`` of a tiny ImageReward: every key of the real file (BLIP's MED BERT
    config) with widths, depths and the vocabulary shrunk, plus the ``"vision"`` override."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": 32,
        "add_cross_attention": True,
        "vision": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 32, "depth": 2, "num_heads": 2},
    }


def official_layout_extras(model, embed_dim: int = 16) -> dict[str, torch.Tensor]:
    """Entries the official checkpoint holds beside the scorer's weights (BLIP projections, ids)."""
    vision_width = model.vision_config.width
    text_width = model.mlp.layers[0].in_features
    max_positions = model.blip.text_encoder.embeddings.position_embeddings.num_embeddings
    return {
        "blip.vision_proj.weight": torch.randn(embed_dim, vision_width),
        "blip.vision_proj.bias": torch.zeros(embed_dim),
        "blip.text_proj.weight": torch.randn(embed_dim, text_width),
        "blip.text_proj.bias": torch.zeros(embed_dim),
        "blip.text_encoder.embeddings.position_ids": torch.arange(max_positions)[None],
    }


def build_tiny_image_reward(folder: Path, seed: int = 0) -> None:
    """Write ``ImageReward.pt`` and ``med_config.json`` into ``folder`` (the files of
    ``THUDM/ImageReward``; its tokenizer is :func:`build_tiny_bert_base_uncased`'s)."""
    from editspecialists.evaluation.image_reward import (
        CHECKPOINT_FILE,
        MED_CONFIG_FILE,
        ImageRewardModel,
        read_configs,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_bert_tokenizer()
    (folder / MED_CONFIG_FILE).write_text(json.dumps(tiny_image_reward_med_config(len(tokenizer)), indent=2))
    model = ImageRewardModel(*read_configs(folder / MED_CONFIG_FILE))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("cls_token", "pos_embed")):
                param.normal_(std=0.5)
            elif name.startswith("mlp.") and name.endswith("weight"):
                param.normal_(std=param.shape[1] ** -0.5)  # variance-preserving: rewards spread ~1
    state = {**model.state_dict(), **official_layout_extras(model)}
    torch.save(state, folder / CHECKPOINT_FILE)


def model_paths(root: Path | None = None) -> dict[str, str]:
    """Config ``models`` entries of the tiny evaluation models under ``root`` (nothing is built)."""
    root = Path(root) if root else default_cache_root()
    hps, pickscore, image_reward = root / "hps", root / "pickscore", root / "imagereward"
    laion_clip = root / PICKSCORE_PROCESSOR_FOLDER
    return {
        "hps_architecture": str(hps / f"{HPS_ARCHITECTURE}.json"),
        "hps_checkpoint": str(hps / HPS_CHECKPOINT),
        "pickscore": str(pickscore),
        "pickscore_processor": str(laion_clip),
        "imagereward": str(image_reward),
        "imagereward_tokenizer": str(root / IMAGE_REWARD_TOKENIZER_FOLDER),
    }


def tiny_models_config(root: Path) -> dict[str, str]:
    """Config ``models`` entries pointing every feedback and evaluation model at its tiny version
    under ``root`` (``feedback_standins.build_all(root)`` and :func:`build_all` layout; nothing is built)."""
    return {**feedback_standins.models_config(root), **model_paths(root)}


def build_all(root: Path | None = None) -> dict[str, str]:
    """Build (or reuse) the tiny evaluation models; returns :func:`model_paths`."""
    root = Path(root) if root else default_cache_root()
    cached_build(root / "hps", build_tiny_hps)
    cached_build(root / "pickscore", build_tiny_clip_repo)
    cached_build(root / PICKSCORE_PROCESSOR_FOLDER, build_tiny_pickscore_processor)
    cached_build(root / "imagereward", build_tiny_image_reward)
    cached_build(root / IMAGE_REWARD_TOKENIZER_FOLDER, build_tiny_bert_base_uncased)
    return model_paths(root)
