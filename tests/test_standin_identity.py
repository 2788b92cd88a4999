"""Every stand-in carries the identity of the real repo it replaces (tests/fixtures/hub).

Checked per stand-in file against the facts: ``model_type``/``architectures`` (``_class_name``
for diffusers), processor and image-processor classes, every preprocessing key, tokenizer class
and maximum length, and the scheduler config. A verbatim fact file is compared both ways (no key
missing, none added beyond :data:`WRITTEN_BY_THE_LIBRARY`); a ``*.facts.json`` file (fields
seen) only for its own keys. The only values allowed to differ are the shrunk image sizes of
:data:`SHRUNK_SIZE_KEYS`.
"""

import json
from pathlib import Path

import pytest

from editspecialists.demo import evaluation_standins, feedback_standins
from editspecialists.demo.policy_standin import tiny_ip2p

FACTS = Path(__file__).parent / "fixtures" / "hub"

# (stand-in file, key): why it may differ from the real value. Image sizes only, for CPU speed.
SHRUNK_SIZE_KEYS = {
    ("detector/preprocessor_config.json", "size"): "800/1333 px → 96 px",
    ("segmenter/processor_config.json", "target_size"): "1024 → 64 px (follows the image size)",
    ("depth/preprocessor_config.json", "size"): "518 → 56 px",
    ("clip/preprocessor_config.json", "size"): "224 → 32 px",
    ("clip/preprocessor_config.json", "crop_size"): "224 → 32 px",
    ("laion-clip-h/preprocessor_config.json", "size"): "224 → 32 px",
    ("laion-clip-h/preprocessor_config.json", "crop_size"): "224 → 32 px",
}
# Keys transformers 5 writes that the older published files lack, each at its library default.
WRITTEN_BY_THE_LIBRARY = {
    ("detector/preprocessor_config.json", "do_convert_annotations"),
}
# Keys whose values in the real repos were not seen: sizes (library defaults, shrunk).
UNSEEN_SIZE_KEYS = {"size", "mask_size"}


def mismatches(saved: dict, facts: dict, file: str, verbatim: bool) -> list[str]:
    """Differences of ``saved`` from ``facts`` outside the allowlists, one line per key.

    Keys starting with ``_`` other than ``_class_name`` are serialisation metadata (library
    version, ``_valid_processor_keys``) and skipped; a ``null`` fact may be absent.
    """
    problems = []
    for key, value in facts.items():
        if key.startswith("_") and key != "_class_name" or (file, key) in SHRUNK_SIZE_KEYS:
            continue
        if saved.get(key) != value:
            problems.append(f"{file}: {key} = {saved.get(key, '<missing>')!r}, real {value!r}")
    for key in saved:
        if verbatim and key not in facts and not key.startswith("_") and (file, key) not in WRITTEN_BY_THE_LIBRARY:
            problems.append(f"{file}: {key} is not in the real file")
    return problems


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def standins(tiny_root) -> Path:
    feedback_standins.build_all(tiny_root)
    evaluation_standins.build_all(tiny_root)
    tiny_ip2p(tiny_root)
    return tiny_root


# (stand-in file, fact file, the fact file is verbatim)
PROCESSING_FILES = [
    ("instruct-pix2pix/scheduler/scheduler_config.json",
     "timbrooks__instruct-pix2pix/scheduler/scheduler_config.json", True),
    ("detector/preprocessor_config.json", "IDEA-Research__grounding-dino-tiny/preprocessor_config.json", True),
    ("detector/tokenizer_config.json", "IDEA-Research__grounding-dino-tiny/tokenizer_config.facts.json", False),
    ("segmenter/processor_config.json", "facebook__sam2.1-hiera-large/processor_config.json", True),
    ("segmenter/processor_config.json", "facebook__sam2-hiera-large/processor_config.json", True),
    ("segmenter/preprocessor_config.json", "facebook__sam2.1-hiera-large/preprocessor_config.facts.json", False),
    ("depth/preprocessor_config.json", "depth-anything__Depth-Anything-V2-Large-hf/preprocessor_config.json", True),
    ("depth/preprocessor_config.json", "depth-anything__Depth-Anything-V2-Small-hf/preprocessor_config.json", True),
    ("dinov2/preprocessor_config.json", "facebook__dinov2-large/preprocessor_config.json", True),
    ("dinov2/preprocessor_config.json", "facebook__dinov2-base/preprocessor_config.json", True),
    ("clip/preprocessor_config.json", "openai__clip-vit-large-patch14/preprocessor_config.json", True),
    # LAION's own file was not seen: its sister repos hold the OpenAI CLIP file (see SOURCES.md)
    ("laion-clip-h/preprocessor_config.json", "openai__clip-vit-large-patch14/preprocessor_config.json", True),
    ("imagereward/med_config.json", "THUDM__ImageReward/med_config.facts.json", False),
    ("bert-base-uncased/tokenizer_config.json", "google-bert__bert-base-uncased/tokenizer_config.json", True),
]


@pytest.mark.parametrize("standin_file, fact_file, verbatim", PROCESSING_FILES)
def test_processing_configs_are_the_real_ones(standins, standin_file, fact_file, verbatim):
    saved, facts = read(standins / standin_file), read(FACTS / fact_file)
    shrinkable = {"hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                  "max_position_embeddings", "vocab_size", "encoder_width"}
    if standin_file == "imagereward/med_config.json":  # a model config: widths, depths, vocabulary shrink
        facts = {key: value for key, value in facts.items() if key not in shrinkable}
    assert mismatches(saved, facts, standin_file, verbatim) == []


def test_shrunk_keys_are_size_keys_that_the_real_files_hold():
    for standin_file, key in SHRUNK_SIZE_KEYS:
        assert key in {"size", "crop_size", "target_size"}, key
        facts = [read(FACTS / fact) for file, fact, _ in PROCESSING_FILES if file == standin_file]
        assert facts and all(key in fact for fact in facts), (standin_file, key)


def test_segmenter_preprocessing_sizes_are_only_the_unseen_size_keys(standins):
    saved = read(standins / "segmenter/preprocessor_config.json")
    facts = read(FACTS / "facebook__sam2.1-hiera-large/preprocessor_config.facts.json")
    assert set(saved) - set(facts) == UNSEEN_SIZE_KEYS


MODEL_CONFIGS = [
    ("detector/config.json", "IDEA-Research__grounding-dino-tiny/config.facts.json"),
    ("segmenter/config.json", "facebook__sam2.1-hiera-large/config.facts.json"),
    ("segmenter/config.json", "facebook__sam2-hiera-large/config.facts.json"),
    ("depth/config.json", "depth-anything__Depth-Anything-V2-Large-hf/config.json"),
    ("dinov2/config.json", "facebook__dinov2-large/config.facts.json"),
    ("clip/config.json", "openai__clip-vit-large-patch14/config.facts.json"),
    ("laion-clip-h/config.json", "laion__CLIP-ViT-H-14-laion2B-s32B-b79K/config.facts.json"),
    ("pickscore/config.json", "laion__CLIP-ViT-H-14-laion2B-s32B-b79K/config.facts.json"),  # a CLIP-H fine-tune
    ("bert-base-uncased/config.json", "google-bert__bert-base-uncased/config.json"),
]


@pytest.mark.parametrize("standin_file, fact_file", MODEL_CONFIGS)
def test_model_type_and_architectures_are_the_real_ones(standins, standin_file, fact_file):
    saved, facts = read(standins / standin_file), read(FACTS / fact_file)
    assert (saved["model_type"], saved["architectures"]) == (facts["model_type"], facts["architectures"])


def test_segmenter_keeps_the_real_memory_switches(standins):
    saved, facts = read(standins / "segmenter/config.json"), read(FACTS / "facebook__sam2-hiera-large/config.facts.json")
    for key in ("enable_occlusion_spatial_embedding", "enable_temporal_pos_encoding_for_object_pointers"):
        assert saved[key] == facts[key], key


def test_ip2p_pipeline_has_the_real_components(standins):
    saved = read(standins / "instruct-pix2pix/model_index.json")
    facts = read(FACTS / "timbrooks__instruct-pix2pix/model_index.facts.json")
    assert mismatches(saved, facts, "model_index.json", verbatim=False) == []
    extra = {key: value for key, value in saved.items() if key not in facts and not key.startswith("_")}
    assert all(value == [None, None] for value in extra.values()), extra  # absent components
    for component in ("unet", "vae"):
        config = read(standins / "instruct-pix2pix" / component / "config.json")
        component_facts = read(FACTS / f"timbrooks__instruct-pix2pix/{component}/config.facts.json")
        for key in ("_class_name", "in_channels", "out_channels") + (("latent_channels", "scaling_factor")
                                                                     if component == "vae" else ()):
            assert config[key] == component_facts[key], (component, key)


CLIP_TEXT_CONTEXT = read(FACTS / "openai__clip-vit-large-patch14/config.facts.json")["text_config"]["max_position_embeddings"]
TOKENIZERS = [
    ("instruct-pix2pix/tokenizer/tokenizer_config.json", "CLIPTokenizer", CLIP_TEXT_CONTEXT),  # CLIP L/14's text tower
    ("clip/tokenizer_config.json", "CLIPTokenizer", CLIP_TEXT_CONTEXT),
    ("laion-clip-h/tokenizer_config.json", "CLIPTokenizer",
     read(FACTS / "laion__CLIP-ViT-H-14-laion2B-s32B-b79K/open_clip_config.json")["model_cfg"]["text_cfg"]["context_length"]),
]


@pytest.mark.parametrize("standin_file, tokenizer_class, max_length", TOKENIZERS)
def test_clip_tokenizers_have_the_real_class_and_length(standins, standin_file, tokenizer_class, max_length):
    saved = read(standins / standin_file)
    assert (saved["tokenizer_class"], saved["model_max_length"]) == (tokenizer_class, max_length)


def test_hps_architecture_is_vit_h_14_shrunk(standins):
    """Every key of HPSv2's ViT-H-14 open_clip config; only widths, depths and the image size
    shrink (the BPE vocabulary and the 77-token context stay)."""
    saved = read(standins / "hps" / f"{evaluation_standins.HPS_ARCHITECTURE}.json")
    facts = read(FACTS / "xswu__HPSv2/open_clip_model_config_ViT-H-14.json")
    assert saved.keys() == facts.keys()
    for tower in ("vision_cfg", "text_cfg"):
        assert saved[tower].keys() == facts[tower].keys(), tower
    assert (saved["text_cfg"]["vocab_size"], saved["text_cfg"]["context_length"]) == (49408, 77)
    assert (standins / "hps" / read(FACTS / "xswu__HPSv2/loading.facts.json")["checkpoint_files"]["v2.1"]).is_file()


def test_dreamsim_cache_holds_the_files_dreamsim_checks(standins):
    required = read(FACTS / "ssundaram21__dreamsim/loading.facts.json")["required_files"]["dinov2_vitb14_patch"]
    for name in required:
        path = standins / "dreamsim" / name
        assert path.is_dir() if name.endswith("/") else path.is_file(), name


def test_a_changed_preprocessing_value_is_reported():
    facts = read(FACTS / "depth-anything__Depth-Anything-V2-Large-hf/preprocessor_config.json")
    saved = {key: value for key, value in facts.items() if not key.startswith("_")}
    assert mismatches(saved, facts, "depth/preprocessor_config.json", True) == []
    assert mismatches({**saved, "resample": 2}, facts, "depth/preprocessor_config.json", True) == [
        "depth/preprocessor_config.json: resample = 2, real 3"]
    assert mismatches({**saved, "extra": 1}, facts, "depth/preprocessor_config.json", True) == [
        "depth/preprocessor_config.json: extra is not in the real file"]
    assert mismatches({**saved, "size": {"height": 56}}, facts, "depth/preprocessor_config.json", True) == []
    assert mismatches({**saved, "size": {"height": 56}}, facts, "x/preprocessor_config.json", True) != []
