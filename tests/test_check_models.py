"""The model check (scripts/check_models.py) and the model-id messages that every run reuses.

The script runs as a user types it, in a working folder with the repository's ``scripts/`` and
``config/`` and the session's build cache of demo assets (tests/test_demo_runs.py's way), offline
with an empty hub cache.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editspecialists.evaluation.families import evaluation_model_keys
from editspecialists.model_check import CheckResult, ModelCheck, POLICY, estimate_training_memory
from editspecialists.model_ids import (MEMORY_FIX, ModelIdError, explain_loading, id_problem, model_ids_of,
                                       validate_model_ids)
from editspecialists.rewards.registry import feedback_model_keys
from tests.helpers import launch, load_config

REPO = Path(__file__).resolve().parents[1]
DEMO_ROWS = {  # role column -> a class the row must report
    "pretrained.model": "UNet2DConditionModel",
    "models.depth": "DepthAnythingForDepthEstimation",
    "models.dreamsim": "",
    "models.detector + models.segmenter": "GroundingDinoForObjectDetection",
    "models.clip": "CLIPModel",
    "models.dino": "Dinov2Model",
    "models.hps_architecture + models.hps_checkpoint": "CLIP",
    "models.pickscore + models.pickscore_processor": "CLIPModel",
    "models.imagereward + models.imagereward_tokenizer": "ImageRewardModel",
}


@pytest.fixture
def workdir(tmp_path, demo_assets_root) -> Path:
    for name in ("scripts", "config"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "demo_assets").symlink_to(demo_assets_root.resolve())
    return tmp_path


def run_check_script(workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python scripts/check_models.py --config config/demo.py`` offline, with an empty hub cache."""
    return launch(f"HF_HUB_OFFLINE=1 HF_HOME={workdir / 'hf_home'} OMP_NUM_THREADS=1 python scripts/check_models.py "
                  f"--config config/demo.py {' '.join(overrides)}", workdir)


def table_rows(output: str) -> dict[str, str]:
    """Table lines of the output by their role column."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("role "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith("seconds:"):
            break
        role = next((role for role in DEMO_ROWS if line.startswith(role + "  ")), None)
        assert role, f"unexpected table row {line!r}"
        rows[role] = line
    return rows


@pytest.mark.slow
def test_demo_config_prints_every_row_ok_and_exits_0(workdir):
    result = run_check_script(workdir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    rows = table_rows(result.stdout)
    assert list(rows) == list(DEMO_ROWS)
    for role, line in rows.items():
        assert line.rstrip().endswith("OK"), line
        assert DEMO_ROWS[role] in line and " cpu " in line and " fp32" in line, line
    assert "train  " in rows["pretrained.model"] and "eval  " in rows["models.clip"]
    assert "train+eval" in rows["models.depth"]
    assert "Estimated GPU memory of a training run" in result.stdout
    assert "all 9 model checks passed" in result.stdout


@pytest.mark.slow
def test_misspelt_ids_exit_non_zero_naming_role_and_id(workdir):
    result = run_check_script(workdir, "--config.models.depth=not-a/real-id",
                              "--config.models.dino=./models/dinov3")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-6000:]
    assert ("role models.depth: not-a/real-id is not in the Hugging Face cache" in result.stdout
            and "run download_repos.sh (with --eval for the evaluation models) or unset HF_HUB_OFFLINE"
            in result.stdout), result.stdout
    assert f"role models.dino: folder ./models/dinov3 does not exist (looked for {workdir / 'models' / 'dinov3'})" \
        in result.stdout
    rows = table_rows(result.stdout)
    assert rows["models.depth"].rstrip().endswith("FAILED") and rows["models.dino"].rstrip().endswith("FAILED")
    assert rows["pretrained.model"].rstrip().endswith("OK")
    assert "incomplete: failed rows not counted: depth\n" in result.stdout
    assert "2 of 9 model checks failed: depth, dino" in result.stdout


# ---------------------------------------------------------------------------------- id messages
def test_missing_local_folders_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert id_problem("models.depth", str(tmp_path / "gone")) == (
        f"role models.depth: folder {tmp_path / 'gone'} does not exist")
    # relative paths: a leading dot, more than one slash, or a first part that exists here
    for path in ("./depth", "models/depth/v2", "data/depth", "~/no-such-folder-xyz"):
        problem = id_problem("models.depth", path)
        assert problem.startswith(f"role models.depth: folder {path} does not exist (looked for /"), problem
    assert id_problem("models.depth", str(tmp_path / "data")) is None


def test_implausible_ids_are_named_offline_and_online(monkeypatch):
    from huggingface_hub import constants

    for offline in (False, True):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        for model_id in ("not a repo", "own er/name", "owner/na--me", "owner/name.git!"):
            assert id_problem("models.clip", model_id) == (
                f"role models.clip: {model_id!r} is neither an existing folder nor a Hugging Face hub id "
                f"(owner/name); fix --config.models.clip"), model_id
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert id_problem("models.clip", "openai/clip-vit-large-patch14") is None  # online: no lookup
    assert id_problem("models.imagereward_tokenizer", "bert-base-uncased") is None  # legacy ids resolve too


@pytest.fixture
def hub_mode(monkeypatch, tmp_path):
    """Sets offline mode (``HF_HUB_OFFLINE`` as read by the hub client) for the test, whatever the
    environment says; the hub cache is an empty folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def set_offline(offline: bool) -> None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    return set_offline


def test_other_kinds_of_ids(hub_mode):
    hub_mode(False)
    assert "no model id given; set --config.pretrained.model" in id_problem("pretrained.model", "")
    assert "'dinov2_vitb15' is neither a DreamSim cache folder nor a DreamSim variant with a patch model " \
           "(dinov2_vitb14, dino_vitb16)" in id_problem("models.dreamsim", "dinov2_vitb15")
    assert "nor a DreamSim variant" in id_problem("models.dreamsim", "ensemble")  # no patch model
    assert id_problem("models.dreamsim", "dinov2_vitb14", dreamsim_cache="/no/such/folder") is None  # downloads
    assert "is neither an open_clip model-config .json file nor an open_clip architecture name" in id_problem(
        "models.hps_architecture", "ViT-H-15")
    assert id_problem("models.hps_architecture", "ViT-H-14") is None
    assert id_problem("models.hps_checkpoint", "/no/HPS.pt") == "role models.hps_checkpoint: file /no/HPS.pt does not exist"
    assert "neither an existing file nor '<owner/name>:<file name>'" in id_problem("models.hps_checkpoint", "HPS.pt")


def test_offline_unresolved_id_through_a_production_loader(tmp_path):
    """HF_HUB_OFFLINE=1 with an empty hub cache (HF_HOME): checked before loading, and a real
    loader's failure explained the same way."""
    code = (
        "from editspecialists.model_ids import explain_loading, validate_model_ids, ModelIdError\n"
        "from editspecialists.rewards.depth import DepthEstimator\n"
        "ids = {'models.depth': 'depth-anything/Depth-Anything-V2-Small-hf'}\n"
        "try:\n    validate_model_ids(ids)\nexcept ModelIdError as e:\n    print('BEFORE', e)\n"
        "try:\n"
        "    with explain_loading(ids):\n"
        "        DepthEstimator.from_pretrained(ids['models.depth'])\n"
        "except ModelIdError as e:\n    print('LOADING', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    expected = (f"role models.depth: depth-anything/Depth-Anything-V2-Small-hf is not in the Hugging Face cache "
                f"({tmp_path / 'hf' / 'hub'}) and HF_HUB_OFFLINE=1 forbids downloading it: run download_repos.sh "
                f"(with --eval for the evaluation models) or unset HF_HUB_OFFLINE")
    assert f"BEFORE {expected}\nLOADING {expected}\n" == result.stdout, result.stdout + result.stderr


def test_folder_that_does_not_load_names_role_and_folder(tmp_path):
    from editspecialists.rewards.depth import DepthEstimator

    folder = tmp_path / "depth"
    folder.mkdir()
    ids = {"models.depth": str(folder)}
    validate_model_ids(ids)  # it exists: nothing to say before loading
    with pytest.raises(ModelIdError, match=f"^role models.depth: {folder} could not be loaded \\(OSError: .*"
                                           f"check that it holds the files its loader reads") as caught:
        with explain_loading(ids):
            DepthEstimator.from_pretrained(str(folder))
    assert isinstance(caught.value.__cause__, OSError)


def test_error_among_several_roles_names_the_one_it_mentions(tmp_path):
    detector, segmenter = tmp_path / "detector", tmp_path / "segmenter"
    detector.mkdir()
    segmenter.mkdir()
    ids = {"models.detector": str(detector), "models.segmenter": str(segmenter)}
    with pytest.raises(ModelIdError) as caught:
        with explain_loading(ids):
            raise OSError(f"no config.json in {segmenter}")
    assert str(caught.value).startswith(f"role models.segmenter: {segmenter} could not be loaded")
    with pytest.raises(ModelIdError, match="^roles models.detector .*, models.segmenter .* could not be loaded"):
        with explain_loading(ids):
            raise OSError("no config.json")


def test_weights_that_do_not_fit_the_model_cannot_be_loaded_but_other_errors_pass(tmp_path):
    """torch's refusal of a state dict is a loading failure; an unknown error (a bug, a kernel's
    failure) keeps its class and traceback."""
    ids = {"models.depth": str(tmp_path)}
    with pytest.raises(ModelIdError, match=f"^role models.depth \\({tmp_path}\\) could not be loaded "
                                           f"\\(RuntimeError: Error\\(s\\) in loading state_dict for Linear:"):
        with explain_loading(ids):
            torch.nn.Linear(2, 2).load_state_dict({"weight": torch.zeros(3, 2), "bias": torch.zeros(2)})
    unknown = RuntimeError("shapes do not match")
    with pytest.raises(RuntimeError) as caught:
        with explain_loading(ids):
            raise unknown
    assert caught.value is unknown


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 281474976710656 bytes. Error code 12 (Cannot allocate memory)"),
])
def test_out_of_memory_while_loading_stays_out_of_memory_with_what_holds_less(tmp_path, error):
    """Not 'could not be loaded': the same class, chained to the error, naming the roles, then
    the settings that hold less memory."""
    ids = {"pretrained.model": str(tmp_path)}
    with pytest.raises(type(error)) as caught:
        with explain_loading(ids):
            raise OSError("the loader gave up") from error
    message = str(caught.value)
    assert message.startswith(f"out of memory while loading role pretrained.model ({tmp_path}) "
                              f"({type(error).__name__}: "), message
    assert message.endswith(MEMORY_FIX) and "reward.offload=True" in message and "mixed_precision=bf16" in message
    assert not isinstance(caught.value, ModelIdError) and caught.value.__cause__.__cause__ is error


@pytest.mark.parametrize("offline", [False, True])
def test_validate_lists_every_bad_role(hub_mode, offline):
    """Online a well-formed hub id may load; offline, with an empty hub cache, it cannot."""
    hub_mode(offline)
    with pytest.raises(ModelIdError) as caught:
        validate_model_ids({"models.depth": "./a", "models.clip": "x y", "models.dino": "facebook/dinov2-large"})
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["role models.depth", "role models.clip"] + (
        ["role models.dino"] if offline else [])


def test_dreamsim_folder_is_checked_offline_before_and_while_loading(hub_mode, tmp_path, tiny_root):
    """The training pre-check (the ids of feedback_model_keys) names DreamSim's folder offline, as
    it names a hub id missing from the hub cache; the loader's own error is explained the same way."""
    from editspecialists.demo.cache import cached_build
    from editspecialists.demo.feedback_standins import build_dreamsim
    from editspecialists.rewards.features import DreamSimPatches

    config = load_config("base")
    config.models.dreamsim_cache = str(tmp_path / "dreamsim")
    ids = model_ids_of(config, feedback_model_keys(config))
    assert list(ids) == ["models.depth", "models.dreamsim", "models.dreamsim_cache", "models.detector",
                         "models.segmenter"]
    hub_mode(False)
    assert id_problem("models.dreamsim", "dinov2_vitb14", dreamsim_cache=ids["models.dreamsim_cache"]) is None
    hub_mode(True)
    expected = (f"role models.dreamsim: DreamSim dinov2_vitb14 is not in {tmp_path / 'dreamsim'} "
                f"(models.dreamsim_cache), which lacks dinov2_vitb14_pretrain.pth, "
                f"dinov2_vitb14_patch_lora/adapter_config.json, facebookresearch_dinov2_main/hubconf.py, "
                f"checkpoints/dinov2_vitb14_pretrain.pth, and HF_HUB_OFFLINE=1 forbids downloading it: run bash "
                f"download_repos.sh on a machine online (it fills models.dreamsim_cache; --dreamsim-cache DIR fills "
                f"another folder) or unset HF_HUB_OFFLINE")
    dreamsim_ids = {role: ids[role] for role in ("models.dreamsim", "models.dreamsim_cache")}
    with pytest.raises(ModelIdError) as caught:
        validate_model_ids(dreamsim_ids)
    assert str(caught.value) == expected
    with pytest.raises(ModelIdError) as caught:
        with explain_loading(dreamsim_ids):
            DreamSimPatches.from_pretrained("dinov2_vitb14", cache_dir=ids["models.dreamsim_cache"])
    assert str(caught.value) == expected
    validate_model_ids({"models.dreamsim": "dinov2_vitb14",
                        "models.dreamsim_cache": str(cached_build(tiny_root / "dreamsim", build_dreamsim))})


def test_load_pipeline_names_the_policy_role(tmp_path):
    from editspecialists.diffusion.pipeline import load_pipeline

    with pytest.raises(ModelIdError, match=f"^role pretrained.model: folder {tmp_path / 'ip2p'} does not exist$"):
        load_pipeline(str(tmp_path / "ip2p"))


# ---------------------------------------------------------------------------------- which ids a run loads
def test_keys_a_training_run_loads():
    config = load_config("base")
    assert feedback_model_keys(config) == ["models.depth", "models.dreamsim", "models.detector", "models.segmenter"]
    config.reward.semantic_backbone = "dinov2"
    config.whole_frame = True
    assert feedback_model_keys(config) == ["models.depth", "models.semantic_dinov2"]
    brightness = load_config("demo", "brightness")  # its validation reports the method's scores too
    assert feedback_model_keys(brightness) == ["models.depth", "models.dreamsim", "models.detector", "models.segmenter"]
    brightness.val.scores = "brightness,reconstruction"
    assert feedback_model_keys(brightness) == ["models.detector", "models.segmenter"]
    brightness.val.every = 0
    assert feedback_model_keys(brightness) == []
    config.reward.semantic_backbone = "dinov3"
    with pytest.raises(ValueError, match="reward.semantic_backbone must be one of"):
        feedback_model_keys(config)


def test_keys_an_evaluation_loads():
    assert evaluation_model_keys(["hps_score", "l2_out"], whole_frame=False) == [
        "models.hps_architecture", "models.hps_checkpoint", "models.detector", "models.segmenter"]
    assert evaluation_model_keys(["hps_score", "l2_out"], whole_frame=True) == [
        "models.hps_architecture", "models.hps_checkpoint"]


# ---------------------------------------------------------------------------------- memory estimate
def test_training_memory_estimate_adds_frozen_trainable_and_feedback():
    config = load_config("base")
    depth = ModelCheck("depth", ("models.depth",), None, None)
    clip = ModelCheck("clip", ("models.clip",), None, None)
    masks = ModelCheck("masks", ("models.detector", "models.segmenter"), None, None)
    results = [
        CheckResult(POLICY, "train", {}, frozen_bytes=1000, trainable_parameters=10),
        CheckResult(depth, "train+eval", {}, frozen_bytes=300),
        CheckResult(clip, "eval", {}, frozen_bytes=5000),  # evaluation only: not resident in training
        CheckResult(masks, "train+eval", {}, frozen_bytes=700, error="role models.detector: ..."),
    ]
    estimate = estimate_training_memory(config, results)
    assert estimate.total == 1000 + 10 * (4 + 4 + 8) + 300
    assert estimate.missing == ["masks"]
    config.train.use_8bit_adam = True
    assert estimate_training_memory(config, results).trainable == 10 * (4 + 4 + 2)
    assert estimate_training_memory(config, results[2:3]) is None


def test_policy_row_counts_lora_trainables_and_bf16_frozen_weights(tiny_ip2p_path):
    """The estimate's inputs come from the loaded models: frozen UNet in bf16, LoRA etc. in fp32."""
    from editspecialists.model_check import describe, load_policy, make_context

    config = load_config("base")
    config.pretrained.model = str(tiny_ip2p_path)
    config.mixed_precision = "bf16"
    parts = load_policy(make_context(config, torch.device("cpu")))
    result = CheckResult(POLICY, "train", {})
    describe(result, parts)
    modules = [parts.policy, parts.vae, parts.text_encoder]
    params = list({id(p): p for m in modules for p in m.parameters()}.values())
    assert result.trainable_parameters == sum(p.numel() for p in params if p.requires_grad) > 0
    assert result.frozen_bytes == sum(p.numel() * 2 for p in params if not p.requires_grad
                                      and p.dtype == torch.bfloat16) + sum(
        p.numel() * 4 for p in params if not p.requires_grad and p.dtype == torch.float32)
    assert result.dtypes == "bf16+fp32"
    assert result.classes == "VisualPromptPolicy(UNet2DConditionModel, StylePromptAttention) + AutoencoderKL + CLIPTextModel"


@pytest.mark.parametrize("stage", ["load", "run"])
def test_a_row_out_of_memory_fails_that_row_and_an_unknown_error_keeps_its_traceback(tmp_path, stage):
    """The table goes on past a model that does not fit (the row reads out of memory, with what
    holds less), never 'does not fit its loader'; an unknown error while loading is not hidden in a row."""
    from editspecialists.model_check import ModelCheck, make_context, run_check

    def failing(error):
        def fail(*args):
            raise error
        return fail

    config = load_config("base")
    config.models.depth = str(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    ctx = make_context(config, torch.device("cpu"))
    memory = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    load, run = (failing(memory), None) if stage == "load" else (lambda ctx: torch.nn.Linear(1, 1), failing(memory))
    result = run_check(ModelCheck("depth", ("models.depth",), load, run), "train", ctx)
    assert "out of memory" in result.error and result.error.endswith(MEMORY_FIX), result.error
    assert "does not fit its loader" not in result.error

    bug = RuntimeError("a bug in the check")
    if stage == "load":
        with pytest.raises(RuntimeError) as caught:
            run_check(ModelCheck("depth", ("models.depth",), failing(bug), None), "train", ctx)
        assert caught.value is bug
    else:  # a model that loads but fails on one image: the row says so, with the error's first line
        result = run_check(ModelCheck("depth", ("models.depth",), lambda ctx: torch.nn.Linear(1, 1), failing(bug)),
                           "train", ctx)
        assert "one image through it failed (RuntimeError: a bug in the check)" in result.error
