"""Config keys checked before anything loads: each wrong value named with its allowed range."""

import math
from pathlib import Path

import ml_collections
import pytest

from editspecialists.config_checks import POLICY_RULES, SHARED_RULES, problems, validate_generation_config
from editspecialists.evaluation.config_rules import EVALUATION_RULES, validate_evaluation_config
from editspecialists.config_keys import flat_items
from editspecialists.model_ids import ModelIdError, id_problem
from tests.helpers import launch, load_config
from editspecialists.training.config_rules import TRAINING_RULES, validate_training_config

REPO = Path(__file__).resolve().parents[1]
# Keys holding model ids: editspecialists.model_ids checks them.
MODEL_ID_KEYS = {"pretrained.model"}


def set_key(config, key: str, value) -> None:
    """Set dotted ``key`` to ``value`` whatever its type (as a config built in Python can)."""
    *parents, leaf = key.split(".")
    for parent in parents:
        config = config[parent]
    with config.ignore_type():
        config[leaf] = value


def error_lines(validate, config) -> list[str]:
    with pytest.raises(ValueError) as raised:
        validate(config)
    return str(raised.value).splitlines()


def is_model_id(key: str) -> bool:
    return key in MODEL_ID_KEYS or (key.startswith("models.") and key != "models.dreamsim_cache")


def rule_keys(rules) -> set[str]:
    return {rule.key for rule in rules}


# ------------------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize("name, preset", [("base", None), ("demo", None), ("demo", "brightness")])
def test_shipped_training_configs_pass(name, preset):
    validate_training_config(load_config(name, preset))


@pytest.mark.parametrize("preset", [None, "demo"])
def test_shipped_evaluation_configs_pass(preset):
    validate_evaluation_config(load_config("eval", preset))


@pytest.mark.parametrize("name, preset", [("base", None), ("demo", None), ("demo", "brightness")])
def test_shipped_generation_configs_pass(name, preset, tiny_ip2p_path):
    config = load_config(name, preset)
    config.pretrained.model = str(tiny_ip2p_path)
    validate_generation_config(config)


@pytest.mark.parametrize("config_name, rules", [("base", TRAINING_RULES), ("eval", EVALUATION_RULES)])
def test_every_key_of_the_config_file_has_a_rule(config_name, rules):
    keys = {key for key, _ in flat_items(load_config(config_name), ("reward.weights",))}
    unchecked = {key for key in keys if not is_model_id(key)} - rule_keys(rules)
    assert not unchecked, f"add a rule (training/ or evaluation/config_rules.py) for {sorted(unchecked)}"
    assert rule_keys(rules) <= keys, "a rule names a key the config does not have"


# ------------------------------------------------------------------------------ every key refused
@pytest.mark.parametrize("key", sorted(rule_keys(TRAINING_RULES)))
def test_every_training_key_refuses_a_value_of_no_kind(key):
    config = load_config("base")
    set_key(config, key, object())
    assert any(line.startswith(f"{key} must ") for line in error_lines(validate_training_config, config))


@pytest.mark.parametrize("key", sorted(rule_keys(EVALUATION_RULES)))
def test_every_evaluation_key_refuses_a_value_of_no_kind(key):
    config = load_config("eval")
    set_key(config, key, object())
    assert any(line.startswith(f"{key} must ") for line in error_lines(validate_evaluation_config, config))


@pytest.mark.parametrize("key, value, message", [
    ("seed", -1, "seed must be in [0, 4294967295], got -1"),
    ("seed", None, "seed must be an integer in [0, 4294967295], got None"),
    ("num_epochs", 0, "num_epochs must be >= 1, got 0"),
    ("save_freq", 0, "save_freq must be >= 1, got 0"),
    ("save_freq", 1.5, "save_freq must be an integer >= 1, got 1.5"),
    ("save_freq", True, "save_freq must be an integer >= 1, got True"),
    ("num_checkpoint_limit", -1, "num_checkpoint_limit must be >= 0 (0 keeps all), got -1"),
    ("mixed_precision", "fp8", "mixed_precision must be one of ['no', 'fp16', 'bf16'], got 'fp8'"),
    ("allow_tf32", 1, "allow_tf32 must be True or False, got 1"),
    ("lora_rank", 0, "lora_rank must be >= 1 with use_lora, got 0"),
    ("lora_alpha", 0, "lora_alpha must be > 0 with use_lora, got 0"),
    ("lora_init", "kaiming", "lora_init must be one of ['default', 'gaussian'], got 'kaiming'"),
    ("gradient_checkpointing", True,
     "gradient_checkpointing must be one of ['without_lora', 'always', 'never'], got True"),
    ("input_name", " ", "input_name must be a non-empty string, got ' '"),
    ("inputimg_dir", None, "inputimg_dir must be a string, got None"),
    ("data_resize", 100, "data_resize must be a positive multiple of 8 (the VAE works on 8x8 pixel blocks), got 100"),
    ("data_resize", 0, "data_resize must be a positive multiple of 8 (the VAE works on 8x8 pixel blocks), got 0"),
    ("pretrained.scheduler", "pndm", "pretrained.scheduler must be one of ['euler_ancestral', 'ddim'] with "
                                     "pretrained.family 'instruct_pix2pix', got 'pndm'"),
    ("pretrained.family", "flux", "pretrained.family must be one of ['instruct_pix2pix', 'flux_kontext'], "
                                  "got 'flux'"),
    ("lora_targets", None, "lora_targets must be a string (comma-separated module names; \"\" for the family's), "
                           "got None"),
    ("sample.num_steps", 0, "sample.num_steps must be >= 1, got 0"),
    ("sample.sde_window", "2-5", 'sample.sde_window must be "" (every step) or "start:stop" (two whole numbers) '
                                 "(steps start..stop-1 stochastic, the rest deterministic), got '2-5'"),
    ("sample.sde_window", "0:2", "sample.sde_window must be one of [''] with the euler_ancestral scheduler (its "
                                 "steps' noise is fixed), got '0:2'"),
    ("sample.eta", -0.5, "sample.eta must be >= 0, got -0.5"),
    ("sample.guidance_scale", math.inf, "sample.guidance_scale must be a finite number, got inf"),
    ("sample.style_image_guidance_scale", "3", "sample.style_image_guidance_scale must be a finite number, got '3'"),
    ("sample.batch_size", 0, "sample.batch_size must be >= 1, got 0"),
    ("sample.num_batches_per_epoch", 0, "sample.num_batches_per_epoch must be >= 1, got 0"),
    ("sample.nb_gen", 1, "sample.nb_gen must be >= 2 (edits are ranked against each other), got 1"),
    ("sample.generation_prompt", "random", "sample.generation_prompt must be one of ['per_image', 'first'], got 'random'"),
    ("sample.edit_format", "jpg", "sample.edit_format must be one of ['input', 'png'], got 'jpg'"),
    ("sample.generation_autocast", "fp16", "sample.generation_autocast must be True or False, got 'fp16'"),
    ("resize_filter", "lanczos", "resize_filter must be one of ['bilinear', 'bicubic'], got 'lanczos'"),
    ("research_code_compat", 1, "research_code_compat must be True or False, got 1"),
    ("use_xformers", True, "use_xformers must be False: True needs the xformers package (pip install xformers), "
                           "got True"),
    ("train.skip_ratio_overflow", None, "train.skip_ratio_overflow must be True or False, got None"),
    ("train.batch_size", 0, "train.batch_size must be >= 1, got 0"),
    ("train.use_8bit_adam", "no", "train.use_8bit_adam must be True or False, got 'no'"),
    ("train.learning_rate", -0.001, "train.learning_rate must be > 0, got -0.001"),
    ("train.learning_rate", math.nan, "train.learning_rate must be a finite number > 0, got nan"),
    ("train.adam_beta1", 1.0, "train.adam_beta1 must be in [0, 1), got 1.0"),
    ("train.adam_beta2", -0.1, "train.adam_beta2 must be in [0, 1), got -0.1"),
    ("train.adam_weight_decay", -1e-4, "train.adam_weight_decay must be >= 0, got -0.0001"),
    ("train.adam_epsilon", 0.0, "train.adam_epsilon must be > 0, got 0.0"),
    ("train.gradient_accumulation_steps", 0, "train.gradient_accumulation_steps must be >= 1, got 0"),
    ("train.max_grad_norm", 0.0, "train.max_grad_norm must be > 0, got 0.0"),
    ("train.num_inner_epochs", 0, "train.num_inner_epochs must be >= 1, got 0"),
    ("train.timestep_fraction", 0.0, "train.timestep_fraction must be in (0, 1], got 0.0"),
    ("train.eps", 1.0, "train.eps must be in (0, 1), got 1.0"),
    ("train.beta", 0.0, "train.beta must be > 0, got 0.0"),
    ("train.score_alpha", math.inf, "train.score_alpha must be a finite number, got inf"),
    ("train.rec_lambda", -0.5, "train.rec_lambda must be >= 0, got -0.5"),
    ("reward.rec_lambda", -0.5, "reward.rec_lambda must be >= 0, got -0.5"),
    ("reward.weights", {}, "reward.weights must name at least one score ({score: weight}), got {}"),
    ("reward.weights", {"brightnes": 1.0}, "reward.weights must name registered scores (structural, semantic, "
                                           "reconstruction, brightness); unknown: brightnes, got {'brightnes': 1.0}"),
    ("reward.weights", {"brightness": math.nan},
     "reward.weights must map each score to a finite number, got {'brightness': nan}"),
    ("reward.weights", {"brightness": True},
     "reward.weights must map each score to a finite number, got {'brightness': True}"),
    ("reward.weights", {"structural": 0.0, "brightness": 0},
     "reward.weights must have a non-zero weight (else every edit ties and nothing is learnt), "
     "got {'brightness': 0, 'structural': 0.0}"),
    ("reward.box_threshold", 1.5, "reward.box_threshold must be in [0, 1], got 1.5"),
    ("reward.text_threshold", -0.1, "reward.text_threshold must be in [0, 1], got -0.1"),
    ("reward.structural_align", "affine", "reward.structural_align must be one of ['none', 'scale_shift'], got 'affine'"),
    ("reward.semantic_backbone", "siglip",
     "reward.semantic_backbone must be one of ['dreamsim', 'dinov2', 'clip'], got 'siglip'"),
    ("reward.batch_size", 0, "reward.batch_size must be >= 1, got 0"),
    ("reward.dtype", "fp64", "reward.dtype must be one of ['fp32', 'fp16', 'bf16'], got 'fp64'"),
    ("reward.overlap", None, "reward.overlap must be True or False, got None"),
    ("reward.standardize", "global", "reward.standardize must be one of ['batch', 'epoch', 'input'], got 'global'"),
    ("reward.mask_fallback", "none", "reward.mask_fallback must be one of ['whole_box', 'ones'], got 'none'"),
    ("val.fraction", 1.0, "val.fraction must be in [0, 1), got 1.0"),
    ("val.seeds", 0, "val.seeds must be >= 1, got 0"),
    ("val.every", -1, "val.every must be >= 0 (0: no validation), got -1"),
    ("val.scores", "semantic,depth", 'val.scores must be "auto" or comma-separated registered scores (structural, '
                                     "semantic, reconstruction, brightness); unknown: depth, got 'semantic,depth'"),
])
def test_a_wrong_training_value_is_named_with_its_range(key, value, message):
    config = load_config("base")
    set_key(config, key, value)
    assert message in error_lines(validate_training_config, config)


def test_a_flux_kontext_config_needs_the_flow_sde_scheduler_and_generation_takes_it():
    config = load_config("base")
    config.pretrained.family = "flux_kontext"
    assert error_lines(validate_training_config, config) == [
        "pretrained.scheduler must be one of ['flow_sde'] with pretrained.family 'flux_kontext', got 'euler_ancestral'"]
    config.pretrained.scheduler = "flow_sde"
    validate_training_config(config)
    validate_generation_config(config)
    config.pretrained.family = "flux"
    assert "pretrained.family must be one of ['instruct_pix2pix', 'flux_kontext'], got 'flux'" in error_lines(
        validate_generation_config, config)


def test_every_wrong_key_is_listed_one_line_each():
    config = load_config("demo", "brightness")
    config.save_freq, config.lora_rank, config.train.learning_rate = 0, 0, -0.001
    assert sorted(error_lines(validate_training_config, config)) == [
        "lora_rank must be >= 1 with use_lora, got 0",
        "save_freq must be >= 1, got 0",
        "train.learning_rate must be > 0, got -0.001",
    ]


def test_ddim_needs_a_positive_eta_and_euler_ignores_it():
    config = load_config("base")
    config.sample.eta = 0.0
    validate_training_config(config)
    config.pretrained.scheduler = "ddim"
    assert error_lines(validate_training_config, config) == [
        "sample.eta must be > 0 with the DDIM scheduler (eta 0 has no log-probability), got 0.0"]


def test_lora_settings_are_free_without_lora():
    config = load_config("base")
    config.use_lora, config.lora_rank, config.lora_alpha = False, 0, 0
    validate_training_config(config)


def test_a_missing_key_is_named():
    values = load_config("base").to_dict()
    del values["train"]["learning_rate"]
    assert "train.learning_rate is missing from the config" in error_lines(
        validate_training_config, ml_collections.ConfigDict(values))


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 0, "batch_size must be >= 1, got 0"),
    ("report_rows", 0, "report_rows must be >= 1, got 0"),
    ("seed", 1.0, "seed must be an integer in [0, 4294967295], got 1.0"),
    ("device", "gpu", "device must be 'auto' or a torch device ('cpu', 'cuda', 'cuda:1', ...), got 'gpu'"),
    ("dtype", "fp64", "dtype must be one of ['fp32', 'fp16', 'bf16'], got 'fp64'"),
    ("box_threshold", 2.0, "box_threshold must be in [0, 1], got 2.0"),
    ("structural_align", "affine", "structural_align must be one of ['none', 'scale_shift'], got 'affine'"),
    ("style_name", "", "style_name must be a non-empty string, got ''"),
    ("whole_frame", "yes", "whole_frame must be True or False, got 'yes'"),
    ("data_resize", -256, "data_resize must be >= 0 (0: the edits' own size), got -256"),
    ("resize_filter", "nearest", "resize_filter must be one of ['bilinear', 'bicubic'], got 'nearest'"),
    ("patch_slicing", "original", "patch_slicing must be one of ['intended', 'research_code'], got 'original'"),
])
def test_a_wrong_evaluation_value_is_named_with_its_range(key, value, message):
    config = load_config("eval", "demo")
    set_key(config, key, value)
    assert error_lines(validate_evaluation_config, config) == [message]


def test_unknown_metrics_are_named():
    config = load_config("eval")
    config.metrics = "l2_out,clip_score"
    [line] = error_lines(validate_evaluation_config, config)
    assert line.startswith("metrics must be 'all' or a comma-separated list of metric names (unknown metric(s) "
                           "['clip_score']")
    assert line.endswith(", got 'l2_out,clip_score'")


# ------------------------------------------------------------------------------ generation
@pytest.fixture
def generation_config(tiny_ip2p_path):
    config = load_config("base")
    config.pretrained.model = str(tiny_ip2p_path)
    return config


def test_generation_checks_only_the_keys_it_reads(generation_config):
    generation_config.sample.nb_gen, generation_config.train.learning_rate = 1, -1.0  # training only
    generation_config.pretrained.scheduler, generation_config.sample.eta = "ddim", 0.0  # deterministic edits
    validate_generation_config(generation_config)
    generation_config.sample.num_steps = 0
    assert error_lines(validate_generation_config, generation_config) == ["sample.num_steps must be >= 1, got 0"]


def test_generation_checks_the_policy_keys_of_the_checkpoints_run(generation_config):
    run_config = ml_collections.ConfigDict(generation_config.to_dict())
    generation_config.lora_rank = 0  # the checkpoint's run config defines the policy
    validate_generation_config(generation_config, run_config)
    run_config.lora_rank = 0
    with pytest.raises(ValueError, match=r"^lora_rank must be >= 1 with use_lora, got 0$"):
        validate_generation_config(generation_config, run_config)


def test_generation_checks_the_model_folder_before_loading(generation_config, tmp_path):
    generation_config.pretrained.model = str(tmp_path / "no-such-model")
    with pytest.raises(ModelIdError, match=r"^role pretrained.model: folder .*no-such-model does not exist$"):
        validate_generation_config(generation_config)
    generation_config.pretrained.model = str(tmp_path)
    with pytest.raises(ModelIdError, match=r"has no model_index.json: it is not a diffusers pipeline folder"):
        validate_generation_config(generation_config)


@pytest.mark.parametrize("url, instead", [
    ("https://huggingface.co/timbrooks/instruct-pix2pix/tree/main", "the hub id timbrooks/instruct-pix2pix"),
    ("https://example.com/model", "a hub id (owner/name)"),
])
def test_a_url_for_a_model_says_what_to_give_instead(url, instead):
    assert id_problem("pretrained.model", url) == (
        f"role pretrained.model: {url} is a URL; give {instead} or a local folder")


def test_shared_and_policy_rules_are_training_rules():
    assert set(SHARED_RULES + POLICY_RULES) <= set(TRAINING_RULES)
    assert not problems(load_config("base"), TRAINING_RULES)


# ------------------------------------------------------------------------------ through the scripts
def assert_refused_before_anything_is_written(result, message: str, workdir) -> None:
    """Exit status 1, ``error: message`` as the last stderr line, no traceback, and nothing
    written in the working folder (no run folder, no output folder)."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}", result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in workdir.iterdir()) == ["config", "scripts"]


def test_train_refuses_save_freq_zero_before_anything_loads(scripts_dir):
    result = launch("python scripts/train.py --config.save_freq=0", scripts_dir)
    assert_refused_before_anything_is_written(result, "save_freq must be >= 1, got 0", scripts_dir)


BRIGHTNESS_CONFIG = """import importlib.util


def get_config():
    spec = importlib.util.spec_from_file_location("base", "{base}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.reward.weights = {{"brightness": 1.0}}
    return config
"""


def test_train_offline_names_a_missing_model_folder(scripts_dir, tmp_path_factory):
    from editspecialists.demo.images import write_demo_images

    inputs, styles = write_demo_images(tmp_path_factory.mktemp("images"), size=32)
    # brightness only, so that no feedback model id is checked (a config file: ml_collections 1.0
    # cannot override a dict on the command line)
    brightness = tmp_path_factory.mktemp("config") / "brightness.py"
    brightness.write_text(BRIGHTNESS_CONFIG.format(base=REPO / "config" / "base.py"))
    result = launch(f"HF_HUB_OFFLINE=1 python scripts/train.py --config={brightness} "
                    f"--config.pretrained.model=/nonexistent --config.inputimg_dir={inputs} "
                    f"--config.styleimg_dir={styles}", scripts_dir)
    assert_refused_before_anything_is_written(result, "role pretrained.model: folder /nonexistent does not exist",
                                              scripts_dir)


def test_generate_refuses_zero_steps_and_a_missing_model_before_writing(scripts_dir):
    result = launch("python scripts/generate.py --config.sample.num_steps=0", scripts_dir)
    assert_refused_before_anything_is_written(result, "sample.num_steps must be >= 1, got 0", scripts_dir)
    result = launch("HF_HUB_OFFLINE=1 python scripts/generate.py --config.pretrained.model=/nonexistent", scripts_dir)
    assert_refused_before_anything_is_written(result, "role pretrained.model: folder /nonexistent does not exist",
                                              scripts_dir)


def test_evaluate_refuses_a_zero_batch_size_before_reading_edits(scripts_dir):
    result = launch("python scripts/evaluate.py --config.batch_size=0", scripts_dir)
    assert_refused_before_anything_is_written(result, "batch_size must be >= 1, got 0", scripts_dir)
