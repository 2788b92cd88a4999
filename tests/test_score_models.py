"""A score registered with a model of its own (``register_score(..., models=[ModelNeed(...)])``):
the scorer loads it once and hands it to the factory, and the model check, training's offline
pre-check and ``download_repos.sh`` know it, with nothing else to declare."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from editspecialists.model_check import download_keys, format_table, make_context, planned_checks, run_check
from editspecialists.model_ids import ModelIdError
from editspecialists.rewards import SCORES, ModelNeed, build_scorer, register_score
from editspecialists.rewards.needs import run_on_image
from editspecialists.rewards.registry import feedback_model_keys
from editspecialists.training.trainer import Trainer
from tests.helpers import load_config, tiny_brightness_config

REPO = Path(__file__).resolve().parents[1]


class MeanColour:
    """The test's own feedback model: a 1 × 1 convolution read from ``folder/model.safetensors``;
    ``model(images (N, 3, H, W)) -> (N,)``, the mean of its output."""

    def __init__(self, folder: str, device: torch.device, dtype: torch.dtype):
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.conv.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
        self.conv.requires_grad_(False).to(device=device, dtype=dtype)
        self.device = torch.device(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images.to(self.device, self.conv.weight.dtype)).float().mean(dim=(1, 2, 3))


def load_mean_colour(config, device, dtype) -> MeanColour:
    return MeanColour(config.models.mean_colour, device, dtype)


MEAN_COLOUR = ModelNeed("mean_colour", "models.mean_colour", load_mean_colour, run_on_image)


def make_mean_colour(config, device, model: MeanColour):
    def score(batch):
        return model(batch.flat_edits).view(-1, batch.num_edits)

    return score


@pytest.fixture
def mean_colour_score():
    """The score ``mean_colour`` registered for one test."""
    register_score("mean_colour", lower_is_better=False, models=[MEAN_COLOUR])(make_mean_colour)
    yield SCORES["mean_colour"]
    del SCORES["mean_colour"]


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """The model's folder: weights 1/3 per channel, no bias (its output: the mean over RGB)."""
    folder = tmp_path / "mean_colour"
    folder.mkdir()
    save_file({"weight": torch.full((1, 3, 1, 1), 1 / 3), "bias": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


def scoring_config(model_folder, weights: dict):
    config = load_config("base")
    config.models.mean_colour = str(model_folder)
    config.reward.weights = weights
    return config


def test_the_scorer_loads_the_model_once_and_gives_it_to_the_factory(mean_colour_score, model_folder):
    config = scoring_config(model_folder, {"mean_colour": 1.0, "brightness": 1.0})
    scorer = build_scorer(config, "cpu")
    edits = torch.rand(2, 3, 3, 8, 8)
    scores = scorer(edits, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    assert torch.allclose(scores["mean_colour"], scores["brightness"], atol=1e-6)
    assert [type(model) for model in scorer.feedback_models] == [MeanColour]
    assert scorer.only(["mean_colour"]).feedback_models == scorer.feedback_models


def test_its_config_key_is_among_the_feedback_model_keys(mean_colour_score, model_folder):
    config = scoring_config(model_folder, {"mean_colour": 1.0})
    config.val.every = 0
    assert feedback_model_keys(config) == ["models.mean_colour"]
    config.val.every = 2  # validation reports the method's scores too
    assert feedback_model_keys(config) == ["models.depth", "models.dreamsim", "models.mean_colour",
                                           "models.detector", "models.segmenter"]
    assert "models.mean_colour" not in feedback_model_keys(config, ["semantic"])


def test_the_model_check_has_a_row_that_loads_and_runs_it(mean_colour_score, model_folder):
    config = scoring_config(model_folder, {"mean_colour": 1.0})
    planned = {check.name: (check, use) for check, use in planned_checks(config)}
    check, use = planned["mean_colour"]
    assert check.keys == ("models.mean_colour",) and use == "train"
    assert list(planned)[:5] == ["policy", "depth", "semantic", "mean_colour", "masks"]

    ctx = make_context(config, torch.device("cpu"))
    result = run_check(check, use, ctx)
    assert result.ok and result.ids == {"models.mean_colour": str(model_folder)}
    assert result.classes == "Conv2d" and result.dtypes == "fp32" and result.frozen_bytes == 4 * 4
    assert f"models.mean_colour  {model_folder}  train  Conv2d" in format_table([result], ctx.device)

    config.models.mean_colour = str(model_folder.parent / "elsewhere")
    failed = run_check(check, use, ctx)
    assert failed.error == f"role models.mean_colour: folder {model_folder.parent / 'elsewhere'} does not exist"


def test_training_names_its_missing_folder_before_anything_loads(mean_colour_score, tiny_ip2p_path, tmp_path):
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs")
    config.reward.weights = {"mean_colour": 1.0}
    config.models.mean_colour = str(tmp_path / "no-such-model")
    with pytest.raises(ModelIdError, match=f"^role models.mean_colour: folder {tmp_path / 'no-such-model'} "
                                           f"does not exist$"):
        Trainer(config)
    assert not (tmp_path / "logs").exists()


def test_download_keys_hold_its_key_with_and_without_the_evaluation(mean_colour_score, model_folder):
    config = scoring_config(model_folder, {"structural": 1.0, "mean_colour": 1.0})
    config.val.every = 0
    assert download_keys(config, with_eval=False) == ["pretrained.model", "models.depth", "models.mean_colour"]
    with_eval = download_keys(config, with_eval=True)
    assert with_eval[:3] == ["pretrained.model", "models.depth", "models.mean_colour"]
    assert {"models.dreamsim", "models.clip", "models.detector"} <= set(with_eval)


USER_MODULE = '''
from editspecialists.rewards import ModelNeed, register_score

AESTHETIC = ModelNeed("aesthetic", "models.aesthetic", lambda config, device, dtype: None)


@register_score("aesthetic", lower_is_better=False, models=[AESTHETIC])
def aesthetic(config, device, model):
    return lambda batch: model(batch.flat_edits).view(-1, batch.num_edits)
'''

USER_CONFIG = '''
import importlib.util

import my_scores  # registers the score "aesthetic"


def get_config():
    spec = importlib.util.spec_from_file_location("base_config", {base!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.models.aesthetic = "someone/aesthetic-v1"
    config.reward.weights = {{"structural": 1.0, "aesthetic": 0.5}}
    config.val.every = 0
    return config
'''


@pytest.mark.slow
def test_download_repos_lists_the_model_of_a_score_its_config_registers(tmp_path):
    """The user's way: a module of theirs registers the score, their config file imports it."""
    (tmp_path / "my_scores.py").write_text(USER_MODULE)
    (tmp_path / "my_config.py").write_text(USER_CONFIG.format(base=str(REPO / "config" / "base.py")))
    result = subprocess.run(["bash", str(REPO / "download_repos.sh"), "--config", "my_config.py", "--list"],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["pretrained.model timbrooks/instruct-pix2pix",
                                          "models.depth depth-anything/Depth-Anything-V2-Large-hf",
                                          "models.aesthetic someone/aesthetic-v1"]


def test_download_repos_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(REPO / "download_repos.sh")]).returncode == 0
