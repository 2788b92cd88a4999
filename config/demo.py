"""Demo presets: the whole method on tiny local models and generated images, on a CPU.

``--config config/demo.py``             full AI feedback (detector, SAM2, depth, DreamSim) on
                                        tiny feedback models trained on the demo's scenes.
``--config config/demo.py:brightness``  brightness reward only, on the pretrained demo editor:
                                        shows learning within minutes.
``--config config/demo.py:kontext``     brightness reward only, on a tiny FLUX.1 Kontext pretrained
                                        on the demo task (the flow-SDE path, docs/method.md §13).
The assets are built on first use in the cache, ``$EDITSPECIALISTS_CACHE`` or
``~/.cache/editspecialists`` (see editspecialists.demo.assets); nothing is downloaded.
"""

import importlib.util
from pathlib import Path

from editspecialists.demo.assets import demo_models_config, demo_paths
from editspecialists.demo.cache import default_cache_root


def _base():
    spec = importlib.util.spec_from_file_location("base_config", Path(__file__).with_name("base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(preset: str = ""):
    config = _base()
    config.demo_root = str(default_cache_root())
    paths = demo_paths(config.demo_root)
    config.run_name = ""
    config.logdir = "logs/demo"
    config.inputimg_dir, config.styleimg_dir = paths["inputs"], paths["styles"]
    config.input_name, config.style_name = "car", "lego"
    config.data_resize = 32
    config.mixed_precision = "no"
    config.allow_tf32 = False
    # The demo's figures (README) were measured with these two, the defaults before issue 14 (the
    # original's are seed 0 and peft's default LoRA init, with which the brightness preset learns
    # more slowly at this learning rate: mean brightness 0.737 instead of 0.797 at epoch 11, with
    # the demo editor of 2026-12-01).
    config.seed = 42
    config.lora_init = "gaussian"
    config.pretrained.model = paths["policy"]
    config.wandb_project = ""  # the demo stays local and quiet: metrics.jsonl only
    config.models.update(demo_models_config(config.demo_root))

    config.num_epochs = 2
    config.save_freq = 1
    config.num_checkpoint_limit = 2
    config.sample.num_steps = 10
    config.sample.batch_size = 4
    config.sample.num_batches_per_epoch = 2
    config.sample.nb_gen = 2
    config.sample.sample_savedir = "outputs/demo_edits"
    config.train.batch_size = 2
    config.train.gradient_accumulation_steps = 2
    config.train.learning_rate = 1e-3
    config.train.timestep_fraction = 0.5
    config.reward.batch_size = 16
    config.val.inputimg_dir = paths["held_out"]  # 8 demo cars of their own, never trained on
    config.val.seeds = 2
    config.val.every = 1

    if preset == "brightness":
        config.logdir = "logs/demo_brightness"
        config.reward.weights = {"brightness": 1.0}
        config.num_epochs = 12
        # With the demo editor whose decoder keeps the scene (2026-12-08) the edits of one input
        # differ less in brightness; at 1e-3 the training edits then got brighter (0.51 to 0.57)
        # but the held-out edits gained no clear brightness (+0.014 ± 0.017), at 5e-4 the
        # training edits' gain was 0.037 where the test asks 0.035.
        config.train.learning_rate = 7e-4
    elif preset == "kontext":
        # The method on a tiny FLUX.1 Kontext pretrained on the demo edit (demo/kontext_editor.py):
        # at 32 px its latents are 4 x 4 (FLUX's VAE factor 8) and its edits blurred scenes without
        # bricks, so the brightness reward is what shows the flow-SDE sampling, log-probabilities
        # and update learning.
        config.logdir = "logs/demo_kontext"
        config.pretrained.model = paths["kontext"]
        config.pretrained.family = "flux_kontext"
        config.pretrained.scheduler = "flow_sde"
        config.sample.eta = 0.7  # the SDE noise level a (Flow-GRPO's)
        config.sample.guidance_scale = 2.5  # Kontext [dev]'s distilled guidance (its pipeline's default)
        config.pretrained.max_sequence_length = 64  # the demo editor's prompt length (its prompts fit)
        config.reward.weights = {"brightness": 1.0}
        config.num_epochs = 12
    elif preset:
        raise ValueError(f"unknown demo preset {preset!r}: use '', 'brightness' or 'kontext'")
    else:
        # The full method (README, "Does the full method learn"). Learning rate: at 1e-3 the policy
        # leaves the clip band within two epochs and the held-out reconstruction grows with no
        # semantic gain; at 3e-4 the held-out scores move as far in control runs
        # (reward.ranking = "random") as with the feedback. At 1e-4, after 60 epochs (about 6
        # minutes on 2 cores), on 64 held-out edits (8 cars x 8 seeds), the specialist beats its
        # control's semantic score by 6 to 9 standard errors in 3 of 7 seeds (those whose control
        # degrades it; it is worse than its control in 2), and meets issue 25's bar against the
        # base model in 2 of 9 seeds (the semantic part in 4, the structural part in 4; on 96
        # further held-out cars, config/eval.py:demo_wide, 2 of 9 too). At 5e-5 the same seeds
        # split alike.
        config.train.learning_rate = 1e-4
        config.num_epochs = 60
        config.val.every = 10
        config.val.seeds = 8
    return config
