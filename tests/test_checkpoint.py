"""Checkpoint files: atomic layout, loud mismatches, loading that provably changes the model."""

import pytest
import torch

from editspecialists.diffusion.pipeline import load_pipeline
from editspecialists.diffusion.policy import build_policy
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
