"""Checkpoint files: atomic layout, loud mismatches, loading that provably changes the model."""

import pytest
import torch

from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.pipeline import load_pipeline
from editspecialists.diffusion.policy import build_policy
from editspecialists.diffusion.sampler import sample_edits
from editspecialists.training import checkpoint as ckpt


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
    ckpt.prune_checkpoints(tmp_path, keep=1)
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
    stale = ckpt.temporary_path(final)
    stale.mkdir()
    (stale / "half-written").write_text("")
    tmp = ckpt.temporary_folder(final)
    assert tmp == stale and not any(tmp.iterdir()), "an interrupted save's leftovers are cleared"
    (tmp / ckpt.WEIGHTS).write_text("new")
    assert (final / ckpt.WEIGHTS).read_text() == "old", "the old checkpoint stays until the commit"
    ckpt.commit_folder(tmp, final)
    assert (final / ckpt.WEIGHTS).read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
    assert ckpt.resolve_checkpoint(final / ckpt.WEIGHTS) == final
