"""The tiny FLUX.1 Kontext [dev] stand-in carries the real repo's identity and runs an edit.

Facts: ``tests/fixtures/hub/black-forest-labs__FLUX.1-Kontext-dev`` (all ``*.facts.json``: the
Kontext repo's own files were not found; the fields are those of FLUX.1-dev's published files for
the components Kontext shares, checked against Black Forest Labs' reference ``flux-dev-kontext``
spec; see ``tests/fixtures/hub/SOURCES.md``). Only sizes may differ: :data:`SIZE_KEYS` per file,
and the token ids of the shrunk vocabularies (:data:`TOKEN_ID_KEYS`).
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from editspecialists.demo import kontext_standin
from editspecialists.demo.cache import builds_done
from editspecialists.demo.kontext_standin import real_size_kontext_transformer_parameters, tiny_kontext

FACTS = Path(__file__).parent / "fixtures" / "hub" / "black-forest-labs__FLUX.1-Kontext-dev"

# Keys whose values are sizes: the stand-in shrinks them.
SIZE_KEYS = {
    "transformer": {"num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim",
                    "joint_attention_dim", "pooled_projection_dim", "axes_dims_rope"},
    "vae": {"block_out_channels", "layers_per_block", "norm_num_groups", "sample_size"},
    "text_encoder": {"hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                     "projection_dim", "vocab_size"},
    "text_encoder_2": {"d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers", "vocab_size"},
}
# CLIP's byte-level stand-in vocabulary has <|startoftext|>/<|endoftext|> at ids 0/1 (the real
# ones: 49406/49407; the real config's eos_token_id 2 is the legacy value that makes transformers
# pool at the highest id), so the stand-in's config names its own ids.
TOKEN_ID_KEYS = {"text_encoder": {"bos_token_id", "eos_token_id", "pad_token_id"}}
# The real-size transformer: 11,901,408,320 parameters with diffusers 0.35.2 and 0.42.1 (the model
# card's "12 billion parameter" rounds it; FLUX.1-dev's config, which Kontext's spec repeats, gives
# the same count). 1 % tolerates a library adding or dropping a bias or norm, not a wrong block
# count or width (one single block is 1.2 % of the total, one double block 2.9 %).
REAL_TRANSFORMER_PARAMETERS = 11.9e9
COUNT_TOLERANCE = 0.01


def facts(name: str) -> dict:
    return json.loads((FACTS / name).read_text())


@pytest.fixture(scope="module")
def kontext_path(tiny_kontext_path) -> Path:
    return tiny_kontext_path


@pytest.fixture(scope="module")
def pipe(kontext_path):
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline.from_pretrained(kontext_path)


def test_cached_build_is_reused(kontext_path, tiny_root):
    before = builds_done()
    assert tiny_kontext(tiny_root) == kontext_path
    assert builds_done() == before


def test_components_have_the_real_classes(pipe, kontext_path):
    import diffusers
    import transformers

    index = json.loads((kontext_path / "model_index.json").read_text())
    for key, value in facts("model_index.facts.json").items():
        assert index[key] == value, key
        if key.startswith("_"):
            continue
        library, class_name = value
        module = diffusers if library == "diffusers" else transformers
        assert isinstance(getattr(pipe, key), getattr(module, class_name)), key
    assert type(pipe).__name__ == "FluxKontextPipeline"


def assert_same_config(component: str, loaded: dict, real: dict) -> None:
    skipped = SIZE_KEYS.get(component, set()) | TOKEN_ID_KEYS.get(component, set())
    for key, value in real.items():
        if key in skipped:
            continue
        assert loaded.get(key, "<missing>") == value, f"{component}: {key}"


def test_transformer_config(pipe):
    config = dict(pipe.transformer.config)
    real = facts("transformer/config.facts.json")
    assert real.pop("_class_name") == type(pipe.transformer).__name__
    assert_same_config("transformer", config, real)
    assert sum(config["axes_dims_rope"]) == config["attention_head_dim"]
    assert config["joint_attention_dim"] == pipe.text_encoder_2.config.d_model
    assert config["pooled_projection_dim"] == pipe.text_encoder.config.hidden_size
    assert config["in_channels"] == 4 * pipe.vae.config.latent_channels  # 2x2 packed latents


def test_vae_config(pipe):
    real = facts("vae/config.facts.json")
    assert real.pop("_class_name") == type(pipe.vae).__name__
    assert_same_config("vae", dict(pipe.vae.config), real)
    assert (pipe.vae.config.latent_channels, pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (
        16, 0.3611, 0.1159)
    assert pipe.vae_scale_factor == 2 ** (len(real["block_out_channels"]) - 1)  # as many levels: 8


def test_scheduler_config(pipe, kontext_path):
    real = facts("scheduler/scheduler_config.facts.json")
    saved = json.loads((kontext_path / "scheduler" / "scheduler_config.json").read_text())
    assert {key: value for key, value in saved.items() if key != "_diffusers_version"} == real
    assert type(pipe.scheduler).__name__ == real.pop("_class_name")
    assert {key: pipe.scheduler.config[key] for key in real} == real


def test_text_encoder_configs(pipe):
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    # Each real file as loading the real repo sees it: read by the installed transformers into the
    # real-size model (on the meta device). transformers 5 rewrites T5's tie_word_embeddings and
    # T5EncoderModel sets is_encoder_decoder/use_cache to False, for the stand-in as for the real.
    for component, config_class, model_class in (("text_encoder", CLIPTextConfig, CLIPTextModel),
                                                 ("text_encoder_2", T5Config, T5EncoderModel)):
        real_facts = facts(f"{component}/config.facts.json")
        with torch.device("meta"):
            real = model_class(config_class(**real_facts)).config
        loaded = getattr(pipe, component).config
        assert type(getattr(pipe, component)).__name__ == real_facts["architectures"][0]
        # (a key transformers 5 no longer keeps, such as CLIP's legacy "dropout", is absent from both)
        assert_same_config(component, {key: getattr(loaded, key, None) for key in real_facts},
                           {key: getattr(real, key, None) for key in real_facts})


def test_tokenizers(pipe):
    clip = facts("tokenizer/tokenizer_config.facts.json")
    assert type(pipe.tokenizer).__name__ == clip["tokenizer_class"]
    for key in ("model_max_length", "bos_token", "eos_token", "pad_token", "unk_token"):
        assert str(getattr(pipe.tokenizer, key)) == str(clip[key]), key

    t5 = facts("tokenizer_2/tokenizer_config.facts.json")
    tokenizer = pipe.tokenizer_2
    assert type(tokenizer).__name__ == t5["tokenizer_class"]  # transformers 5: T5TokenizerFast is T5Tokenizer
    for key in ("model_max_length", "eos_token", "pad_token", "unk_token"):
        assert str(getattr(tokenizer, key)) == str(t5[key]), key
    # The real layout: specials first, the extra ids last in reverse (32000-32099 of 32100 there).
    real_ids = {token["content"]: int(i) for i, token in t5["added_tokens_decoder"].items()}
    real_size = max(real_ids.values()) + 1
    for token in ("<pad>", "</s>", "<unk>"):
        assert tokenizer.convert_tokens_to_ids(token) == real_ids[token], token
    for token in ("<extra_id_99>", "<extra_id_0>"):
        assert len(tokenizer) - tokenizer.convert_tokens_to_ids(token) == real_size - real_ids[token], token
    assert tokenizer("a hat").input_ids[-1] == real_ids["</s>"]


def test_two_step_edit_returns_the_requested_size(pipe):
    # Kontext sets the output size to max_area at the requested aspect ratio (1024² by default) and,
    # with _auto_resize, resizes the input image to a preferred ~1 MP resolution: both kept at 64 px.
    image = Image.new("RGB", (64, 64), (120, 60, 30))
    output = pipe(
        image=image, prompt="add a red hat", num_inference_steps=2, guidance_scale=2.5, height=64, width=64,
        max_area=64 * 64, _auto_resize=False, max_sequence_length=32, generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert output.size == (64, 64)


def test_library_facts_are_the_fixtures():
    """The builder's constants (the library does not read tests/) hold the fixtures' fields."""
    def without_class(name):
        return {key: value for key, value in facts(name).items() if key != "_class_name"}

    assert kontext_standin.KONTEXT_TRANSFORMER == without_class("transformer/config.facts.json")
    assert kontext_standin.KONTEXT_VAE == without_class("vae/config.facts.json")
    assert kontext_standin.KONTEXT_SCHEDULER == facts("scheduler/scheduler_config.facts.json")
    assert kontext_standin.KONTEXT_CLIP_TEXT == facts("text_encoder/config.facts.json")
    assert kontext_standin.KONTEXT_T5 == facts("text_encoder_2/config.facts.json")
    assert kontext_standin.KONTEXT_COMPONENTS == without_class("model_index.facts.json")
    t5_tokenizer = facts("tokenizer_2/tokenizer_config.facts.json")
    tokenizer_facts = kontext_standin.KONTEXT_T5_TOKENIZER
    assert tokenizer_facts == {key: t5_tokenizer[key] for key in tokenizer_facts}


def test_real_size_transformer_parameters():
    count = real_size_kontext_transformer_parameters()
    assert abs(count - REAL_TRANSFORMER_PARAMETERS) / REAL_TRANSFORMER_PARAMETERS < COUNT_TOLERANCE, count
