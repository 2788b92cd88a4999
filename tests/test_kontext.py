"""The FLUX.1 Kontext backbone (diffusion/kontext.py, docs/method.md §13) on the tiny stand-in: the
packing and position ids of diffusers' pipeline, the policy at initialisation editing exactly as
``FluxKontextPipeline`` for the same seed and prompt whatever the style image, the visual-prompt
path trainable, LoRA where the config says, and the SDE log-probabilities recomputed by training."""

import numpy as np
import pytest
import torch
from diffusers import FluxKontextPipeline
from PIL import Image
from safetensors.torch import load_file

from editspecialists.diffusion.bundle import EditModelSpec, build_edit_model
from editspecialists.diffusion.pipeline import FLOW_SDE, FLUX_KONTEXT
from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.kontext import (KONTEXT_LORA_TARGETS, pack_latents, position_ids,
                                               unpack_latents)
from editspecialists.diffusion.logprob import windowed_eta
from editspecialists.diffusion.sampler import sample_edits, transition_log_probs
from editspecialists.formats import checkpoint as ckpt
from editspecialists.training.config_rules import validate_training_config
from editspecialists.training.tracking import read_metrics
from editspecialists.training.trainer import Trainer
from editspecialists.training.validation import VALIDATION_FILE, read_rows
from editspecialists.demo.kontext_editor import EDITOR_TRANSFORMER, EDITOR_VAE
from tests.helpers import load_config

SIZE, STEPS, GUIDANCE, PROMPT = 32, 3, 2.5, "turn the car into lego"
SCALES = GuidanceScales(text=GUIDANCE)


def spec(path, **overrides) -> EditModelSpec:
    return EditModelSpec(str(path), scheduler=FLOW_SDE, family=FLUX_KONTEXT, scales=SCALES, lora_rank=4,
                         lora_alpha=4, **overrides)


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def model(tiny_kontext_path):
    model = build_edit_model(spec(tiny_kontext_path))
    model.set_timesteps(STEPS, SIZE)
    return model


def pipeline_latents(path, image: Image.Image, seed: int) -> torch.Tensor:
    """FluxKontextPipeline's final latents (1, 16, h, w) for ``image``, the prompt and ``seed``."""
    pipe = FluxKontextPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    packed = pipe(image=image, prompt=PROMPT, guidance_scale=GUIDANCE, num_inference_steps=STEPS, height=SIZE,
                  width=SIZE, max_area=SIZE * SIZE, _auto_resize=False, output_type="latent",
                  generator=torch.Generator().manual_seed(seed)).images
    side = SIZE // pipe.vae_scale_factor
    return unpack_latents(packed, side, side)


def policy_latents(model, image: Image.Image, style: Image.Image, seed: int, eta=0.0):
    cond = model.conditioning(as_tensor(image), as_tensor(style), [PROMPT])
    return sample_edits(model.policy, model.scheduler, model.vae, cond, nb_gen=1, scales=SCALES, eta=eta,
                        generator=torch.Generator().manual_seed(seed))


def test_packing_and_position_ids_are_the_pipelines():
    latents = torch.randn(2, 16, 6, 4)
    packed = FluxKontextPipeline._pack_latents(latents, 2, 16, 6, 4)
    assert torch.equal(pack_latents(latents), packed)
    assert torch.equal(unpack_latents(packed, 6, 4), latents)
    expected = FluxKontextPipeline._prepare_latent_image_ids(1, 3, 2, "cpu", torch.float32)
    assert torch.equal(position_ids(6, 4, 0, "cpu", torch.float32), expected)
    expected[..., 0] = 1  # the context image's tokens
    assert torch.equal(position_ids(6, 4, 1, "cpu", torch.float32), expected)


def test_the_policy_starts_as_flux_kontext_for_any_style_image(model, tiny_kontext_path):
    """The ODE sampler (noise level 0) of the untrained policy gives the pipeline's latents for the
    same seed and prompt (the widened x_embedder's zero columns: float rounding only), for two
    style images and with the style module moved away from its start."""
    image = picture(0)
    expected = pipeline_latents(tiny_kontext_path, image, seed=3)
    edits = [policy_latents(model, image, picture(style), seed=3).latents[:, 0, -1] for style in (1, 2)]
    with torch.no_grad():
        for param in model.policy.style_module.parameters():
            param.add_(torch.randn_like(param))
    edits.append(policy_latents(model, image, picture(1), seed=3).latents[:, 0, -1])
    for edit in edits:
        torch.testing.assert_close(edit, expected, rtol=0, atol=1e-5)
    assert (expected - pipeline_latents(tiny_kontext_path, image, seed=4)).abs().max() > 1e-2, "the seed matters"


def test_the_visual_prompt_path_is_trainable_and_the_reference_stays_the_base_model(tiny_kontext_path):
    model = build_edit_model(spec(tiny_kontext_path))
    model.set_timesteps(STEPS, SIZE)
    policy = model.policy
    cond = model.conditioning(as_tensor(picture(0)), as_tensor(picture(1)), [PROMPT])
    latents, timestep = torch.randn(1, 16, 4, 4), model.scheduler.timesteps[1]
    policy(latents, timestep, cond, SCALES).square().sum().backward()
    style_columns = policy.transformer.x_embedder.weight.grad[:, 64:]
    assert style_columns.abs().max() > 0, "the zero columns of the style channels get a gradient at once"
    with torch.no_grad():
        base = policy(latents, timestep, cond, SCALES)
        policy.transformer.x_embedder.weight[:, 64:].normal_(std=0.1)
    policy.zero_grad()
    policy(latents, timestep, cond, SCALES).square().sum().backward()
    assert all(param.grad.abs().max() > 0 for param in policy.style_module.parameters())
    with torch.no_grad():
        moved = policy(latents, timestep, cond, SCALES)
        with policy.reference():
            reference = policy(latents, timestep, cond, SCALES)
    assert (moved - base).abs().max() > 1e-3
    assert torch.equal(reference, base)


def test_lora_sits_on_the_attention_projections_in_fp32_over_frozen_bf16(tiny_kontext_path):
    policy = build_edit_model(spec(tiny_kontext_path, frozen_dtype=torch.bfloat16)).policy
    lora = {name.split(".lora_")[0] for name, _ in policy.transformer.named_parameters() if ".lora_A." in name}
    targets = {".".join(name.split(".")[-2:]) if name.endswith(".0") else name.split(".")[-1] for name in lora}
    assert targets == set(KONTEXT_LORA_TARGETS)
    assert {p.dtype for p in policy.trainable_parameters()} == {torch.float32}
    frozen = {p.dtype for name, p in policy.transformer.named_parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    trainable = {name.split(".")[0] for name, _ in policy.trainable_state_dict().items()}
    assert trainable == {"transformer", "style_module"}
    only = build_edit_model(spec(tiny_kontext_path, lora_targets=("to_q",))).policy
    assert {name.split(".")[-4] for name, _ in only.transformer.named_parameters() if ".lora_A." in name} == {"to_q"}


def test_training_recomputes_the_sampled_sde_log_probs_and_the_first_ratio_is_one(model):
    """SDE sampling in a window of steps: training's log-probs (policy and reference, read by step
    index) equal the sampled ones at the window's steps; the steps outside are deterministic."""
    eta = windowed_eta(STEPS, 0.7, (0, 2))
    cond = model.conditioning(as_tensor(picture(0)), as_tensor(picture(1)), [PROMPT])
    trajectories = sample_edits(model.policy, model.scheduler, model.vae, cond, nb_gen=2, scales=SCALES, eta=eta,
                                generator=torch.Generator().manual_seed(0))
    assert trajectories.trainable.tolist() == [True, True, False] and trajectories.pooled_embeds is not None
    assert (trajectories.log_probs[..., 2] == 0).all()
    for step in (0, 1):
        index = torch.tensor([step])
        with torch.no_grad():
            recomputed = transition_log_probs(model.policy, model.scheduler, trajectories, index, None,
                                              scales=SCALES, eta=eta)
            reference = transition_log_probs(model.policy, model.scheduler, trajectories, index, None,
                                             scales=SCALES, eta=eta, reference=True)
        torch.testing.assert_close(recomputed, trajectories.log_probs[:, :, step], rtol=0, atol=1e-5)
        assert torch.equal(recomputed, reference), "ratio 1 before the first update"


def test_the_kontext_config_selects_the_flow_sde_editor_in_bf16():
    config = load_config("kontext")
    validate_training_config(config)
    spec = EditModelSpec.from_config(config)
    assert (spec.model, spec.family, spec.scheduler) == ("black-forest-labs/FLUX.1-Kontext-dev", FLUX_KONTEXT, FLOW_SDE)
    assert (spec.frozen_dtype, spec.gradient_checkpointing, spec.lora_targets) == (torch.bfloat16, "always", None)
    assert EditModelSpec.from_config(config, lora_targets=None).scales.text == 2.5


@pytest.mark.slow
def test_the_kontext_demo_learns_brightness_on_held_out_edits_and_resumes(demo_assets_root, kontext_editor_path,
                                                                          tmp_path):
    """config/demo.py:kontext as it stands (12 epochs, held-out validation after each): the held-out
    brightness beats the base model's by more than 2 standard errors (README, "Kontext"), through
    the trainer's flow-SDE sampling, update and checkpoints; a resumed run goes on from its
    checkpoint."""
    config = load_config("demo", "kontext")
    assert config.pretrained.model == str(kontext_editor_path)
    config.logdir, config.run_name = str(tmp_path), "kontext"
    run = Trainer(config).run()
    final = [row for row in read_metrics(run) if row.get("after_epochs") == 12][0]
    assert final["val/brightness_delta"] > 2 * final["val/brightness_delta_se"] > 0
    checkpoint = ckpt.resolve_checkpoint(run)
    assert checkpoint.name == "checkpoint_0012"
    config.num_epochs, config.load_checkpoint = 13, str(run)
    resumed = Trainer(config)
    assert resumed.load().first_epoch == 12
    saved = load_file(str(checkpoint / ckpt.WEIGHTS))
    trained = resumed.unwrapped_policy.trainable_state_dict()
    assert all(torch.equal(trained[name], value) for name, value in saved.items())
    assert any(name.startswith("transformer.x_embedder") for name in saved)
    resumed.run()
    assert ckpt.resolve_checkpoint(run).name == "checkpoint_0013"
    assert {row["after_epochs"] for row in read_rows(run / VALIDATION_FILE)} == set(range(14))


def test_the_demo_kontext_editor_keeps_the_identity_and_reconstructs_the_demo_cars(kontext_editor_path,
                                                                                    tiny_kontext_path):
    """The pretrained demo editor is the stand-in's FluxKontextPipeline (same components and configs
    but where they were loaded from, the VAE's latent factors and the editor's wider sizes) whose VAE reconstructs cars it was not
    trained on (MSE in [0, 1] pixel units 0.025 when measured, below 0.04 required; the random
    stand-in's, which decodes everything to grey, 0.062: above 0.05)."""
    from editspecialists.demo.editor import reconstruction_mse
    from editspecialists.demo.scenes import DEMO_RESOLUTION, demo_training_images, edit_examples

    editor, random = (FluxKontextPipeline.from_pretrained(path) for path in (kontext_editor_path, tiny_kontext_path))
    index = "model_index.json"
    assert (kontext_editor_path / index).read_text() == (tiny_kontext_path / index).read_text()
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        configs = [dict(getattr(pipe, name).config.to_dict() if name.startswith("text") else getattr(pipe, name).config)
                   for pipe in (editor, random)]
        differing = {key for key, value in configs[0].items() if configs[1].get(key) != value}
        sizes = {"transformer": set(EDITOR_TRANSFORMER), "vae": set(EDITOR_VAE)}.get(name, set())
        assert differing <= {"_name_or_path", "shift_factor", "scaling_factor"} | sizes, (name, differing)
    cars = edit_examples(*demo_training_images(num_cars=16, num_walls=1, seed=1), DEMO_RESOLUTION).cars
    assert reconstruction_mse(editor.vae, cars) < 0.04 < 0.05 < reconstruction_mse(random.vae, cars)


def test_the_prompt_length_is_a_setting_passed_to_the_pipelines_encoding(tiny_kontext_path):
    """pretrained.max_sequence_length: the T5 tokens of a prompt (the pipeline's 512 by default),
    encoded as FluxKontextPipeline.encode_prompt encodes them at that length (its encoders run with
    gradients there, without here: float rounding only)."""
    config = load_config("kontext")
    config.pretrained.model, config.pretrained.max_sequence_length = str(tiny_kontext_path), 64
    validate_training_config(config)
    model = build_edit_model(EditModelSpec.from_config(config, frozen_dtype=torch.float32))
    cond = model.conditioning(as_tensor(picture(0)), as_tensor(picture(1)), [PROMPT])
    expected, pooled, _ = FluxKontextPipeline.from_pretrained(tiny_kontext_path).encode_prompt(
        [PROMPT], max_sequence_length=64)
    assert cond.prompt_embeds.shape[1] == 64
    torch.testing.assert_close(cond.prompt_embeds, expected.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(cond.pooled_embeds, pooled.detach(), rtol=0, atol=1e-5)
    config.pretrained.max_sequence_length = 600
    with pytest.raises(ValueError, match=r"pretrained.max_sequence_length must be in \[1, 512\]"):
        validate_training_config(config)
