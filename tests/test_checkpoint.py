"""Checkpoint files: atomic layout, loud mismatches, loading that provably changes the model;
old runs resumed with the behaviour they were trained with."""

import json

import pytest
import torch

from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.pipeline import load_pipeline
from editspecialists.diffusion.policy import build_policy
from editspecialists.diffusion.sampler import sample_edits
from editspecialists import writing
from editspecialists.formats import checkpoint as ckpt
from editspecialists.training import resume
from tests.helpers import load_config


def architecture(use_lora=True, rank=8, alpha=8):
    return {"use_lora": str(use_lora), "lora_rank": str(rank), "lora_alpha": str(alpha)}


def trained_policy(path, rank=8):
    policy = build_policy(load_pipeline(str(path)).unet, use_lora=True, lora_rank=rank, lora_alpha=rank)
    with torch.no_grad():
        for param in policy.trainable_parameters():
            param.add_(0.01 * torch.randn_like(param))
    return policy


def save(policy, folder, arch):
    folder.mkdir(parents=True)
    ckpt.save_weights(folder / ckpt.WEIGHTS, policy.trainable_state_dict(), arch)
    return folder


def test_loaded_weights_change_the_outputs(tiny_ip2p_path, tmp_path):
    trained = trained_policy(tiny_ip2p_path)
    folder = save(trained, tmp_path / "checkpoints" / "checkpoint_0001", architecture())
    fresh = build_policy(load_pipeline(str(tiny_ip2p_path)).unet, use_lora=True)
    before = {k: v.clone() for k, v in fresh.trainable_state_dict().items()}
    ckpt.load_weights(fresh, ckpt.resolve_checkpoint(tmp_path), architecture())
    after = fresh.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for key, value in trained.trainable_state_dict().items():
        torch.testing.assert_close(after[key], value)
    assert ckpt.resolve_checkpoint(tmp_path) == folder


def test_architecture_mismatch_names_the_setting(tiny_ip2p_path, tmp_path):
    folder = save(trained_policy(tiny_ip2p_path, rank=4), tmp_path / "c", architecture(rank=4, alpha=4))
    fresh = build_policy(load_pipeline(str(tiny_ip2p_path)).unet, use_lora=True)
    with pytest.raises(ValueError, match="lora_rank: checkpoint '4' vs config '8'"):
        ckpt.load_weights(fresh, folder, architecture())


def test_key_mismatch_fails_loudly(tiny_ip2p_path, tmp_path):
    policy = trained_policy(tiny_ip2p_path)
    state = {"prefix." + k: v for k, v in policy.trainable_state_dict().items()}
    (tmp_path / "c").mkdir()
    ckpt.save_weights(tmp_path / "c" / ckpt.WEIGHTS, state, architecture())
    with pytest.raises(ValueError, match="missing keys"):
        ckpt.load_weights(policy, tmp_path / "c", architecture())


def test_resolve_picks_the_newest_complete_checkpoint(tmp_path):
    for epoch in (2, 10):
        folder = tmp_path / "checkpoints" / ckpt.checkpoint_name(epoch)
        folder.mkdir(parents=True)
        (folder / ckpt.WEIGHTS).write_bytes(b"")
    (tmp_path / "checkpoints" / "checkpoint_0011.tmp").mkdir()
    assert ckpt.resolve_checkpoint(tmp_path).name == "checkpoint_0010"
    resume.prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint_0010"]


def test_resolve_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        ckpt.resolve_checkpoint(tmp_path)


def probe_outputs(policy, pipe):
    """Guided ε at fixed inputs and a sampled edit (fixed seed): what a checkpoint is for."""
    generator = torch.Generator().manual_seed(11)
    dim = pipe.unet.config.cross_attention_dim
    cond = EditConditioning(torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator),
                            torch.randn(1, 77, dim, generator=generator), torch.randn(1, 77, dim, generator=generator))
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    pipe.scheduler.set_timesteps(3)
    with torch.no_grad():
        eps = policy(latents, torch.tensor(400.0), cond, GuidanceScales())
        images = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=1, scales=GuidanceScales(),
                              generator=torch.Generator().manual_seed(12)).images
        with policy.reference():
            reference_eps = policy(latents, torch.tensor(400.0), cond, GuidanceScales())
    return eps, images, reference_eps


@pytest.mark.parametrize("use_lora", [True, False])
def test_checkpoint_reproduces_the_saved_policy_outputs(tiny_ip2p_path, tmp_path, use_lora):
    """A checkpoint of a perturbed policy (LoRA or full UNet, conv_in style channels, CA module)
    loaded into a fresh policy gives exactly the saved policy's ε and sampled edit, not the initial
    model's, and leaves the reference (initial model) as it was."""
    pipe = load_pipeline(str(tiny_ip2p_path))
    trained = build_policy(pipe.unet, use_lora=use_lora)
    with torch.no_grad():
        for param in trained.trainable_parameters():
            param.add_(0.02 * torch.randn_like(param))
    assert trained.unet.conv_in.weight[:, 8:].abs().max() > 0  # the style channels take part
    arch = architecture(use_lora=use_lora)
    folder = save(trained, tmp_path / "checkpoints" / ckpt.checkpoint_name(3), arch)
    trained_eps, trained_images, _ = probe_outputs(trained, pipe)

    fresh_pipe = load_pipeline(str(tiny_ip2p_path))
    fresh = build_policy(fresh_pipe.unet, use_lora=use_lora)
    initial_eps, initial_images, initial_reference = probe_outputs(fresh, fresh_pipe)
    assert (trained_eps - initial_eps).abs().max() > 1e-3
    assert (trained_images - initial_images).abs().max() > 1e-3

    ckpt.load_weights(fresh, ckpt.resolve_checkpoint(tmp_path), arch)
    assert ckpt.resolve_checkpoint(tmp_path) == folder
    loaded_eps, loaded_images, loaded_reference = probe_outputs(fresh, fresh_pipe)
    assert torch.equal(loaded_eps, trained_eps)
    assert torch.equal(loaded_images, trained_images)
    assert torch.equal(loaded_reference, initial_reference)


def test_a_checkpoint_is_replaced_only_once_its_successor_is_complete(tmp_path):
    final = tmp_path / ckpt.checkpoint_name(2)
    final.mkdir()
    (final / ckpt.WEIGHTS).write_text("old")
    stale = writing.temporary_path(final)
    stale.mkdir()
    (stale / "half-written").write_text("")
    tmp = writing.temporary_folder(final)
    assert tmp == stale and not any(tmp.iterdir()), "an interrupted save's leftovers are cleared"
    (tmp / ckpt.WEIGHTS).write_text("new")
    assert (final / ckpt.WEIGHTS).read_text() == "old", "the old checkpoint stays until the commit"
    writing.commit_folder(tmp, final)
    assert (final / ckpt.WEIGHTS).read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
    assert ckpt.resolve_checkpoint(final / ckpt.WEIGHTS) == final


def old_run(folder, **values):
    """A run folder as main wrote it before issue 14: no lora_init, reward.standardize or
    reward.mask_fallback (nor issue 27's train.skip_ratio_overflow and resize_filter) in its
    config.json, bf16 and seed 42 by default, revision "", a bool gradient_checkpointing;
    ``values`` (dotted keys) set further saved values."""
    saved = load_config("base").to_dict()
    del saved["lora_init"], saved["reward"]["standardize"], saved["reward"]["mask_fallback"]
    del saved["train"]["skip_ratio_overflow"], saved["resize_filter"], saved["research_code_compat"]
    del saved["use_xformers"], saved["sample"]["edit_format"], saved["sample"]["generation_autocast"]
    saved.update(seed=42, mixed_precision="bf16", gradient_checkpointing=False, num_epochs=20)
    saved["pretrained"]["revision"] = ""
    saved["models"]["segmenter"] = "facebook/sam2.1-hiera-large"
    saved["reward"]["weights"] = {"brightness": 1.0}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        section = saved
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    checkpoint = folder / ckpt.CHECKPOINTS / ckpt.checkpoint_name(3)
    checkpoint.mkdir(parents=True)
    (checkpoint / ckpt.WEIGHTS).write_bytes(b"")
    (folder / "config.json").write_text(json.dumps(saved))
    return checkpoint


def test_an_old_run_config_reads_missing_keys_as_their_old_values(tmp_path):
    saved = ckpt.saved_run_config(old_run(tmp_path / "run"))
    assert saved.lora_init == "gaussian"
    assert saved.reward.standardize == "epoch"
    assert saved.reward.mask_fallback == "ones"
    assert saved.train.skip_ratio_overflow is False and saved.resize_filter == "bicubic"
    assert (saved.sample.edit_format, saved.sample.generation_autocast) == ("png", False)
    assert saved.research_code_compat is False and saved.use_xformers is False
    assert saved.pretrained.revision == "main" and saved.gradient_checkpointing == "never"
    assert saved.mixed_precision == "bf16", "a saved value is kept"

    newer = ckpt.saved_run_config(old_run(tmp_path / "newer", **{
        "lora_init": "default", "reward.standardize": "batch", "reward.mask_fallback": "whole_box"}))
    assert (newer.lora_init, newer.reward.standardize, newer.reward.mask_fallback) == (
        "default", "batch", "whole_box")


def test_resuming_an_old_run_keeps_the_behaviour_it_was_trained_with(tmp_path, caplog):
    """Today's defaults on the command line; the resumed config has the run's LoRA init,
    standardisation, mask fallback, seed, precision, segmenter and scores, and the command
    line's resume settings (epochs, log folder)."""
    checkpoint = old_run(tmp_path / "run")
    config = load_config("base")
    config.load_checkpoint, config.num_epochs, config.logdir = str(tmp_path / "run"), 30, str(tmp_path / "logs")
    with caplog.at_level("WARNING"):
        resumed = resume.resumed_config(config, checkpoint)
    assert resumed.lora_init == "gaussian"
    assert resumed.reward.standardize == "epoch"
    assert resumed.reward.mask_fallback == "ones"
    assert (resumed.seed, resumed.mixed_precision) == (42, "bf16")
    assert resumed.models.segmenter == "facebook/sam2.1-hiera-large"
    assert resumed.reward.weights.to_dict() == {"brightness": 1.0}
    assert (resumed.num_epochs, resumed.logdir) == (30, str(tmp_path / "logs"))
    assert resumed.gradient_checkpointing == "without_lora", "a resume setting comes from the command line"
    assert config.lora_init == "default" and config.seed == 0, "the given config is left as it was"
    assert "the run's reward.standardize = 'epoch' (this config: 'batch')" in caplog.text
    assert "num_epochs" not in caplog.text


def test_resuming_warns_about_keys_the_run_never_had(tmp_path, caplog):
    checkpoint = old_run(tmp_path / "run")
    saved = tmp_path / "run" / "config.json"
    tree = json.loads(saved.read_text())
    del tree["train"]["max_grad_norm"]
    saved.write_text(json.dumps(tree))
    with caplog.at_level("WARNING"):
        resumed = resume.resumed_config(load_config("base"), checkpoint)
    assert resumed.train.max_grad_norm == 1.0
    assert "config.json has no train.max_grad_norm; using 1.0" in caplog.text


def test_resuming_on_another_base_model_is_still_refused(tmp_path):
    checkpoint = old_run(tmp_path / "run", **{"pretrained.revision": "fp16"})
    with pytest.raises(ValueError, match="pretrained.revision: run 'fp16' vs now 'main'"):
        resume.resumed_config(load_config("base"), checkpoint)
