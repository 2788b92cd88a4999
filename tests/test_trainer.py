"""The training loop on tiny models: batch arithmetic, logging, checkpoints, exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from editspecialists.formats import checkpoint as ckpt
from editspecialists.training.tracking import epoch_summary, read_metrics
from editspecialists.training.trainer import Trainer, plan_batches
from tests.helpers import load_config, tiny_brightness_config


def test_batch_arithmetic_is_derived_and_checked():
    config = load_config("base")
    plan = plan_batches(config, num_processes=2, num_trainable_steps=99)
    assert plan.images_per_epoch == 4 * 2 * 2
    assert plan.effective_train_batch == 1 * 2 * 8
    assert plan.optimizer_steps_per_epoch == 1
    assert plan.trained_timesteps == 99 and plan.micro_steps_per_optimizer_step == 8 * 99
    assert "num_processes = 2" in plan.describe()
    config.train.gradient_accumulation_steps = 3
    with pytest.raises(ValueError, match="sample.batch_size x sample.num_batches_per_epoch = 8 must be a "
                                         "multiple of train.batch_size x train.gradient_accumulation_steps = 3"):
        plan_batches(config, 1, 99)


def test_missing_or_empty_image_folders_fail_naming_the_key_before_models_load(tmp_path, tiny_ip2p_path):
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs")
    empty = tmp_path / "empty"
    empty.mkdir()
    config.inputimg_dir = str(empty)
    with pytest.raises(ValueError, match=f"^--config.inputimg_dir: input image folder {empty} holds no"):
        Trainer(config).load()
    config.inputimg_dir = str(tmp_path / "data" / "inputs")
    config.styleimg_dir = str(tmp_path / "lego")
    with pytest.raises(FileNotFoundError) as caught:
        Trainer(config).load()
    assert str(caught.value) == f"--config.styleimg_dir: style image folder {tmp_path / 'lego'} does not exist"


def test_construction_checks_the_config_and_loads_nothing_until_load(tmp_path, tiny_ip2p_path, monkeypatch):
    from editspecialists.training import trainer as trainer_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was built at construction")

    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs")
    monkeypatch.setattr(trainer_module, "build_edit_model", no_loading)
    trainer = Trainer(config)
    assert not trainer.loaded and trainer.plan.images_per_epoch == 4
    assert not (tmp_path / "logs").exists()
    monkeypatch.undo()
    assert trainer.load() is trainer and trainer.loaded and (tmp_path / "logs" / "run").is_dir()
    assert trainer.load().policy is trainer.policy  # loads once


@pytest.mark.slow
def test_training_logs_checkpoints_and_resumes_exactly(tiny_ip2p_path, tmp_path, capsys):
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "full", num_epochs=2)
    full_run = Trainer(config).run()

    records = read_metrics(full_run)
    summaries = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [line.split(" |")[0] for line in summaries] == ["epoch 0 (1/2)", "epoch 1 (2/2)"]
    for epoch, line in enumerate(summaries):
        assert f"brightness {records_of(records, epoch)['brightness_mean']:.4g} ± " in line
        assert "preference_fraction" in line and "clipfrac" in line and "left" in line
    epochs = [r for r in records if "brightness_mean" in r]
    steps = [r for r in records if "step" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all({"brightness_mean", "brightness_std"} <= set(r) for r in epochs)
    assert len(steps) == 2 * 2  # 4 inputs per epoch / (1 x 2 accumulation) = 2 steps per epoch
    first = steps[0]
    assert {"epoch", "step", "loss", "ratio_mean", "clipfrac", "grad_norm"} <= set(first)
    assert abs(first["ratio_mean"] - 1) < 1e-4 and first["clipfrac"] == 0
    assert abs(first["loss"] - 0.6931) < 1e-3 or first["loss"] == 0
    assert (full_run / "images" / "edits_0000.png").is_file()
    assert json.loads((full_run / "config.json").read_text())["pretrained"]["model"] == str(tiny_ip2p_path)
    checkpoints = ckpt.list_checkpoints(full_run)
    assert [c.name for c in checkpoints] == ["checkpoint_0001", "checkpoint_0002"]
    assert not list((full_run / "checkpoints").glob("*.tmp"))

    first_half = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "half", num_epochs=1)
    Trainer(first_half).run()
    resumed_config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "resumed", num_epochs=2,
                                            load_checkpoint=str(tmp_path / "half" / "run"))
    resumed = Trainer(resumed_config).load()
    assert resumed.first_epoch == 1
    resumed_run = resumed.run()
    final = load_file(str(ckpt.list_checkpoints(full_run)[-1] / ckpt.WEIGHTS))
    again = load_file(str(ckpt.list_checkpoints(resumed_run)[-1] / ckpt.WEIGHTS))
    assert final.keys() == again.keys()
    for key in final:
        assert torch.equal(final[key], again[key]), key
    initial = Trainer(tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "init")).load()
    moved = initial.unwrapped_policy.trainable_state_dict()
    assert any(not torch.equal(moved[k].cpu(), final[k]) for k in final), "training changed the weights"


def test_a_missing_model_folder_is_named_before_anything_loads_or_is_written(tiny_ip2p_path, tmp_path):
    from editspecialists.model_ids import ModelIdError

    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs")
    config.pretrained.model = str(tmp_path / "no-such-model")
    with pytest.raises(ModelIdError, match="role pretrained.model: folder .*no-such-model does not exist"):
        Trainer(config).load()
    assert not (tmp_path / "logs").exists()


def records_of(records, epoch):
    """The score record of ``epoch`` (the one without a step)."""
    return next(r for r in records if r["epoch"] == epoch and "step" not in r)


def test_epoch_summary_shows_score_statistics_and_step_means():
    records = [{"epoch": 3, "brightness_mean": 0.4612, "brightness_std": 0.068, "preference_fraction": 0.75,
                "mask_fallback_fraction": 0.5},
               {"epoch": 3, "step": 7, "loss": 0.69, "ratio_mean": 1.0, "clipfrac": 0.0},
               {"epoch": 3, "step": 8, "loss": 0.70, "ratio_mean": 1.2, "clipfrac": 0.5},
               {"epoch": 2, "step": 6, "loss": 9.0, "ratio_mean": 9.0, "clipfrac": 1.0}]
    line = epoch_summary(3, 12, records, elapsed_s=75, remaining_s=3725)
    assert line == ("epoch 3 (4/12) | brightness 0.4612 ± 0.068 | preference_fraction 0.75 | "
                    "mask_fallback_fraction 0.50 | loss 0.6950 clipfrac 0.25 ratio_mean 1.1 (2 steps) | "
                    "1:15 elapsed, 1:02:05 left")


@pytest.mark.slow
def test_resume_with_another_lora_rank_names_the_mismatch(tiny_ip2p_path, tmp_path):
    Trainer(tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "a", num_epochs=1)).run()
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "b", lora_rank=4,
                                    load_checkpoint=str(tmp_path / "a" / "run"))
    with pytest.raises(ValueError, match="another model .*lora_rank: run 8 vs now 4"):
        Trainer(config).load()


def test_8bit_adam_without_bitsandbytes_says_how_to_install(tiny_ip2p_path, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs")
    config.train.use_8bit_adam = True
    with pytest.raises(ImportError, match=r"use_8bit_adam=True needs bitsandbytes: pip install 'editspecialists\[8bit\]'"):
        Trainer(config).load()


def test_wandb_is_on_by_default_and_never_prompts(monkeypatch, tmp_path, caplog):
    """As the original, runs log to wandb (project "EditSpecialists"); not logged in or not
    installed, the run goes on with metrics.jsonl and one line saying so."""
    import sys

    from editspecialists.training.tracking import RunLogger, wandb_mode

    assert load_config("base").wandb_project == "EditSpecialists" and load_config("demo").wandb_project == ""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert wandb_mode() is None
    for name, missing, said in (("logged_out", False, "wandb is not logged in"),
                                ("uninstalled", True, "wandb is not installed")):
        if missing:
            monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
        caplog.clear()
        with caplog.at_level("INFO", logger="editspecialists.training.tracking"):
            run_logger = RunLogger(tmp_path / name, enabled=True, wandb_project="EditSpecialists")
        (tmp_path / name).mkdir()
        run_logger.log({"epoch": 0, "loss": 0.69})
        assert run_logger.wandb_run is None and read_metrics(tmp_path / name) == [{"epoch": 0, "loss": 0.69}]
        [line] = [r.getMessage() for r in caplog.records]
        assert line.startswith(said) and str(tmp_path / name / "metrics.jsonl") in line
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"mixed_precision": "bf16"},
    {"use_lora": False, "gradient_checkpointing": "without_lora", "pretrained.scheduler": "ddim"},
])
def test_precision_full_finetune_and_ddim_runs_stay_finite(tiny_ip2p_path, tmp_path, overrides):
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=1, **overrides)
    run = Trainer(config).run()
    steps = [r for r in read_metrics(run) if "step" in r]
    assert steps and all(isinstance(r["loss"], float) and r["loss"] == r["loss"] for r in steps)
    assert sum(r["skipped_micro_steps"] for r in steps) == 0, "a non-finite micro-step was skipped"
    assert abs(steps[0]["ratio_mean"] - 1) < 1e-3


def test_edit_grid_enlarges_small_tiles_and_fits_every_caption_line():
    from editspecialists.training.tracking import edit_grid

    inputs, styles = torch.zeros(3, 3, 32, 32), torch.ones(3, 3, 32, 32)
    edits = torch.full((3, 2, 3, 32, 32), 0.5)
    captions = [["rank 1\nbrightness 0.500\nstructural 0.100", "rank 2\nbrightness 0.400"]] * 3
    grid = edit_grid(inputs, styles, edits, captions, max_rows=2)

    cell_h = 128 + 3 * 11 + 4
    assert grid.size == (4 * 128, 2 * cell_h)
    assert grid.getpixel((127, 127)) == (0, 0, 0) and grid.getpixel((128, 0)) == (255, 255, 255)
    assert grid.getpixel((2 * 128 + 127, cell_h + 127)) == (128, 128, 128)
    caption_band = grid.crop((2 * 128, 128, 3 * 128, cell_h)).convert("L")
    assert caption_band.getextrema()[0] < 100  # text drawn under the edit


class CountingDataset:
    """A user's own dataset: anything with ``epoch_batches``; this one counts its calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def epoch_batches(self, *args, **kwargs):
        self.calls += 1
        return self.inner.epoch_batches(*args, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("fraction, trained", [(0.5, 2), (1.0, 3)])
def test_own_dataset_and_timestep_fraction_set_the_trained_steps(tiny_ip2p_path, tmp_path, monkeypatch,
                                                                 fraction, trained):
    from editspecialists.data.dataset import EditDataset

    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=1,
                                    **{"train.timestep_fraction": fraction})
    dataset = CountingDataset(EditDataset(config.inputimg_dir, config.styleimg_dir, "car", "lego", 32))
    config.inputimg_dir = config.styleimg_dir = str(tmp_path / "unused")
    calls = []
    real_micro_step = Trainer.micro_step
    monkeypatch.setattr(Trainer, "micro_step", lambda self, batch, step_index, *rest: (
        calls.append(step_index.tolist()), real_micro_step(self, batch, step_index, *rest))[1])
    trainer = Trainer(config, dataset=dataset).load()
    assert trainer.plan.trained_timesteps == trained  # 4 Euler steps: 3 trainable, the last is not
    trainer.run()

    assert dataset.calls == 1
    assert len(calls) == 4 * trained  # 4 inputs per epoch, train batch 1
    per_input = [sorted(sum(calls[i:i + trained], [])) for i in range(0, len(calls), trained)]
    assert all(len(set(steps)) == trained and max(steps) <= 2 for steps in per_input)


@pytest.mark.slow
def test_a_window_of_skipped_micro_steps_takes_no_optimizer_step(tiny_ip2p_path, tmp_path, monkeypatch):
    from editspecialists.training import trainer as trainer_module

    real_loss = trainer_module.micro_batch_loss

    def never_finite(*args, **kwargs):
        loss, stats, finite = real_loss(*args, **kwargs)
        return loss, stats, finite & False

    monkeypatch.setattr(trainer_module, "micro_batch_loss", never_finite)
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=1,
                                    **{"train.adam_weight_decay": 0.5})
    trainer = Trainer(config).load()
    before = {k: v.clone() for k, v in trainer.unwrapped_policy.trainable_state_dict().items()}
    run = trainer.run()

    steps = [r for r in read_metrics(run) if "step" in r]
    assert [r["skipped_micro_steps"] for r in steps] == [4, 4]  # 2 inputs x 2 trained steps each
    assert not trainer.optimizer.state, "AdamW stepped on a window without a single update"
    after = trainer.unwrapped_policy.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _fake_run(folder, config):
    """A run folder with config.json and one checkpoint, enough to be resolved and checked."""
    checkpoint = folder / ckpt.CHECKPOINTS / ckpt.checkpoint_name(1)
    checkpoint.mkdir(parents=True)
    (checkpoint / ckpt.WEIGHTS).write_bytes(b"")
    (folder / "config.json").write_text(config.to_json_best_effort())
    return checkpoint


def test_resume_on_another_base_model_fails_before_models_load(tiny_ip2p_path, tmp_path):
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs")
    checkpoint = _fake_run(tmp_path / "old", config)
    config.pretrained.model = str(tmp_path / "another-model")
    config.load_checkpoint = str(checkpoint / ckpt.WEIGHTS)  # the weights file works as well as its folder
    with pytest.raises(ValueError, match=f"cannot resume .*checkpoint_0001 with another model "
                                         f".*pretrained.model: run '{tiny_ip2p_path}' vs now "):
        Trainer(config).load()
    assert not (tmp_path / "logs").exists(), "a refused resume must not create a run folder"


def register_test_score(monkeypatch, name, score, needs_masks=False):
    """Register ``score(batch) -> (B, G)`` as ``name`` for one test (the registry is restored after)."""
    from editspecialists.rewards import registry

    spec = registry.ScoreSpec(name, lower_is_better=True, needs_masks=needs_masks, factory=lambda c, d: score)
    monkeypatch.setitem(registry.SCORES, name, spec)


def train_epochs_skipped(monkeypatch) -> list:
    """Skip the preference updates (they do not matter here); returns the list that gets each
    epoch's (order, has_preference) as the trainer passes them to ``train_epoch``."""
    seen = []
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch, inner, trajectories, order, has_preference,
                        first=0: seen.append((order.cpu(), has_preference.cpu())))
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("mode, first_input_order, preferences", [
    ("batch", [0, 1], [True] * 4),
    ("epoch", [1, 0], [True] * 4),
    ("input", [0, 1], [False, True, False, True]),  # inputs 0 and 2: a and b disagree, a tie
])
def test_scores_are_standardised_per_sampling_batch_or_over_the_epoch(tiny_ip2p_path, tmp_path, monkeypatch,
                                                                      mode, first_input_order, preferences):
    from tests.helpers import TWO_BATCHES

    for name, table in TWO_BATCHES.items():  # batch k of the epoch gets rows 2k, 2k + 1 of the table
        calls = iter(table.split(2))
        register_test_score(monkeypatch, name, lambda batch, calls=calls: next(calls).to(batch.edits.device))
    seen = train_epochs_skipped(monkeypatch)
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=1,
                                    **{"reward.standardize": mode})
    config.reward.weights = {"a": 1.0, "b": 1.0}
    Trainer(config).run()

    (order, has_preference), = seen
    # by hand in test_ranking: only the first input's ranking depends on the grouping
    assert order.tolist() == [first_input_order, [0, 1], [0, 1], [0, 1]]
    assert has_preference.tolist() == preferences


@pytest.fixture(scope="module")
def mask_models(tiny_root):
    from editspecialists.demo.cache import cached_build
    from editspecialists.demo.feedback_standins import build_detector, build_segmenter

    return (str(cached_build(tiny_root / "detector", build_detector)),
            str(cached_build(tiny_root / "segmenter", build_segmenter)))


@pytest.mark.slow
@pytest.mark.parametrize("box_threshold, fraction", [(1.0, 1.0), (0.0, 0.0)])
def test_the_fraction_of_images_without_detection_is_logged_and_warned_about(
        tiny_ip2p_path, tmp_path, monkeypatch, caplog, mask_models, box_threshold, fraction):
    def masked_brightness(batch):  # reads both masks, as the semantic score does
        weight = (batch.input_masks.float().mean() + batch.style_masks.float().mean()) / 2
        return weight * batch.edits.float().mean(dim=(2, 3, 4))

    register_test_score(monkeypatch, "masked_brightness", masked_brightness, needs_masks=True)
    train_epochs_skipped(monkeypatch)
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", num_epochs=1,
                                    **{"reward.box_threshold": box_threshold})
    config.reward.weights = {"masked_brightness": 1.0}
    config.models.detector, config.models.segmenter = mask_models
    config.input_name, config.style_name = "car", "lego"
    with caplog.at_level("WARNING", logger="editspecialists.training.trainer"):
        run = Trainer(config).run()

    epochs = [r for r in read_metrics(run) if "masked_brightness_mean" in r]
    assert [r["mask_fallback_fraction"] for r in epochs] == [fraction]  # 4 inputs + 4 styles
    warnings = [r.getMessage() for r in caplog.records if "the detector found no" in r.getMessage()]
    if fraction > 0.5:
        assert warnings == ["epoch 0: the detector found no input_name 'car' in 4 of 4 images: the name does not "
                            "match what the images show, and the semantic reward measures the whole frame there",
                            "epoch 0: the detector found no style_name 'lego' in 4 of 4 images: the name does not "
                            "match what the images show, and the semantic reward measures the whole frame there"]
    else:
        assert warnings == []
