"""ImageReward parity: our native model against the official code (``image-reward`` 1.5).

The expected values in ``tests/fixtures/image_reward/official_scores.json`` were computed by the
official package in a side environment (transformers 4.36, timm 0.6.13; no hub) by
``tests/fixtures/image_reward/make_fixture.py``, whose docstring gives the environment, versions
and command to remake it (``python tests/fixtures/image_reward/make_fixture.py --med-config
<THUDM/ImageReward's med_config.json>`` in that environment). Both sides build the same weights
(a deterministic fill keyed by state-dict name), vocabulary (30522 synthetic wordpieces with
bert-base-uncased's special ids), pixels and images from ``tests/fixtures/image_reward/synthetic.py``,
so no weight file is needed.

Here, the official key names and shapes are written into an ``ImageReward.pt`` that the
production loader (:meth:`ImageRewardScorer.from_pretrained`) reads, and its scores are compared:
- model only, on identical pixel and token tensors: |Δ| < 1e-4 (measured ≤ 1.1e-6);
- end to end, from PIL images and prompt strings through each side's own preprocessing (the
  official torchvision/PIL resize and crop and slow BERT tokenizer; our tensor resize and fast
  tokenizer): |Δ| < ``END_TO_END_TOLERANCE``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editspecialists.data.images import image_to_tensor
from editspecialists.evaluation.image_reward import (
    CHECKPOINT_FILE,
    MAX_PROMPT_TOKENS,
    MED_CONFIG_FILE,
    UNUSED_KEY_PREFIXES,
    ImageRewardModel,
    ImageRewardScorer,
    read_configs,
    tokenize_prompts,
)
from tests.fixtures.image_reward import synthetic

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "image_reward" / "official_scores.json").read_text())
MODEL_ONLY_TOLERANCE = 1e-4
END_TO_END_TOLERANCE = 1e-2  # measured: max 0.0038 over the four images (PIL's uint8 resize passes)


@pytest.fixture(scope="module")
def med_config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("imagereward_config") / MED_CONFIG_FILE
    path.write_text(json.dumps(FIXTURE["med_config"]))
    return path


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    """bert-base-uncased's stand-in: the synthetic vocabulary, saved and read back as the
    production loader reads ``imagereward_tokenizer``."""
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("imagereward_tokenizer")
    vocab = {token: index for index, token in enumerate(synthetic.vocabulary())}
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(folder)
    return folder


def test_state_dict_is_the_official_layout_less_the_unused_entries(med_config_path):
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in ImageRewardModel(*read_configs(med_config_path)).state_dict().items()}
    official = {name: shape for name, shape, _ in FIXTURE["state_dict"]}
    unused = {k for k in official if k.startswith(UNUSED_KEY_PREFIXES)}
    assert unused == {"blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight",
                      "blip.text_proj.bias", "blip.text_encoder.embeddings.position_ids"}
    assert ours == {k: v for k, v in official.items() if k not in unused}


def test_prompt_tokens_are_the_official_ones(tokenizer_folder):
    from transformers import AutoTokenizer

    assert max(FIXTURE["tokenizer"]["untruncated_lengths"]) > MAX_PROMPT_TOKENS  # truncation is exercised
    tokens = tokenize_prompts(AutoTokenizer.from_pretrained(tokenizer_folder), synthetic.PROMPTS)
    assert tokens.input_ids.tolist() == FIXTURE["tokenizer"]["input_ids"]
    assert tokens.attention_mask.tolist() == FIXTURE["tokenizer"]["attention_mask"]


def _official_layout_checkpoint(path: Path) -> None:
    """``ImageReward.pt`` with every official entry: the synthetic fill, position ids as arange."""
    state = {}
    for name, shape, dtype in FIXTURE["state_dict"]:
        if dtype == "int64":
            state[name] = torch.arange(shape[-1]).expand(shape).clone()
        else:
            state[name] = torch.from_numpy(synthetic.fill(name, tuple(shape)))
    torch.save(state, path)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, med_config_path, tokenizer_folder) -> ImageRewardScorer:
    folder = tmp_path_factory.mktemp("imagereward")
    _official_layout_checkpoint(folder / CHECKPOINT_FILE)
    (folder / MED_CONFIG_FILE).write_text(med_config_path.read_text())
    scorer = ImageRewardScorer.from_pretrained(str(folder), str(tokenizer_folder))
    (folder / CHECKPOINT_FILE).unlink()
    return scorer


@pytest.mark.slow
def test_model_scores_equal_the_official_on_identical_inputs(scorer):
    pixels = torch.from_numpy(synthetic.model_only_pixels(len(synthetic.PROMPTS)))
    input_ids = torch.tensor(FIXTURE["tokenizer"]["input_ids"])
    attention_mask = torch.tensor(FIXTURE["tokenizer"]["attention_mask"])
    with torch.no_grad():
        scores = scorer.model(pixels, input_ids, attention_mask)
    delta = (scores - torch.tensor(FIXTURE["model_only_scores"])).abs()
    print(f"ImageReward model-only |Δ| per pair: {delta.tolist()}")
    assert delta.max().item() < MODEL_ONLY_TOLERANCE, (scores, FIXTURE["model_only_scores"])


@pytest.mark.slow
def test_scores_from_pil_images_match_the_official_end_to_end(scorer):
    scores = []
    for prompt, (width, height, seed) in zip(synthetic.PROMPTS, synthetic.END_TO_END_IMAGES):
        image = Image.fromarray(synthetic.end_to_end_image_array(width, height, seed))
        scores.append(scorer(image_to_tensor(image)[None], [prompt]).item())
    delta = np.abs(np.array(scores) - np.array(FIXTURE["end_to_end_scores"]))
    print(f"ImageReward end-to-end |Δ| per image: {delta.round(6).tolist()}")
    assert delta.max() < END_TO_END_TOLERANCE, (scores, FIXTURE["end_to_end_scores"])
