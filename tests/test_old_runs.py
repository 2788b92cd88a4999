"""Issue 14, item 8: a run saved before a default changed resumes with the behaviour it was
trained with (keys its config.json lacks read as their values before they existed)."""

import json

import pytest

from editspecialists.formats import checkpoint as ckpt
from editspecialists.training.trainer import Trainer
from tests.helpers import tiny_brightness_config


def make_old(run_dir):
    """Rewrite a run's config.json as main wrote it before issue 14 (no lora_init,
    reward.standardize, reward.mask_fallback; revision "", a bool gradient_checkpointing)."""
    path = run_dir / "config.json"
    saved = json.loads(path.read_text())
    del saved["lora_init"], saved["reward"]["standardize"], saved["reward"]["mask_fallback"]
    saved["pretrained"]["revision"] = ""
    saved["gradient_checkpointing"] = False
    path.write_text(json.dumps(saved))


@pytest.mark.slow
def test_an_old_run_resumes_with_its_lora_init_standardisation_and_mask_fallback(tiny_ip2p_path, tmp_path):
    first = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "old", num_epochs=1,
                                   lora_init="default")
    make_old(Trainer(first).run())
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "resumed", num_epochs=2,
                                    lora_init="default", load_checkpoint=str(tmp_path / "old" / "run"))
    assert (config.reward.standardize, config.reward.mask_fallback) == ("batch", "whole_box")

    trainer = Trainer(config).load()
    assert trainer.first_epoch == 1
    used = trainer.config
    assert (used.lora_init, used.reward.standardize, used.reward.mask_fallback) == ("gaussian", "epoch", "ones")
    assert used.num_epochs == 2 and used.logdir == str(tmp_path / "resumed")
    run = trainer.run()
    written = json.loads((run / "config.json").read_text())
    assert written["lora_init"] == "gaussian"
    assert written["reward"]["standardize"] == "epoch" and written["reward"]["mask_fallback"] == "ones"
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["checkpoint_0002"]
