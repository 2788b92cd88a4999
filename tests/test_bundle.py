"""One builder of the edit model: the trainer, the model check, the benchmarks, generation and the
specialist pipeline all build the same modules from one config (editspecialists.diffusion.bundle)."""

import pytest
import torch

from editspecialists.diffusion.bundle import EditModelSpec, build_edit_model
from editspecialists.diffusion.guidance import GuidanceScales
from tests.helpers import tiny_brightness_config


def module_fingerprint(module: torch.nn.Module) -> dict[str, tuple]:
    """{parameter or buffer name: (shape, dtype, requires_grad, values)} of every tensor of ``module``."""
    named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {name: (tuple(t.shape), t.dtype, t.requires_grad, t.detach().clone()) for name, t in named.items()}


def assert_same_modules(built: torch.nn.Module, reference: torch.nn.Module, who: str) -> None:
    got, expected = module_fingerprint(built), module_fingerprint(reference)
    assert got.keys() == expected.keys(), f"{who}: parameter names differ"
    for name, (shape, dtype, trainable, values) in expected.items():
        assert got[name][:3] == (shape, dtype, trainable), f"{who}: {name}"
        assert torch.equal(got[name][3], values), f"{who}: values of {name}"


@pytest.fixture
def config(tiny_ip2p_path, tmp_path):
    """A config whose policy differs from every builder default: LoRA rank, alpha and init,
    activation checkpointing, guidance scales."""
    return tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", lora_rank=4,
                                  lora_alpha=2, lora_init="gaussian", gradient_checkpointing="always",
                                  **{"sample.guidance_scale": 5.0, "sample.style_image_guidance_scale": 2.0})


def test_trainer_model_check_generation_and_pipeline_build_identical_models(config):
    from editspecialists.generation import load_editor
    from editspecialists.model_check import load_policy, make_context
    from editspecialists.training.trainer import Trainer

    trainer = Trainer(config).load()  # seeds the LoRA initialisation with config.seed
    reference = trainer.unwrapped_policy
    assert reference.unet.is_gradient_checkpointing
    assert trainer.model.scales == GuidanceScales(5.0, 1.5, 2.0)
    lora_a = [p for name, p in reference.named_parameters() if "lora_A" in name]
    assert lora_a and all(p.shape[0] == 4 for p in lora_a)

    torch.manual_seed(config.seed)
    checked = load_policy(make_context(config, torch.device("cpu")))
    torch.manual_seed(config.seed)
    generating = load_editor(config, torch.device("cpu"))
    for who, built in (("model check", checked.policy), ("generation", generating.denoiser)):
        assert_same_modules(built, reference, who)
        assert built.unet.is_gradient_checkpointing, who
    assert checked.scales == trainer.model.scales


def test_the_spec_of_a_config_and_of_a_recorded_architecture(config):
    spec = EditModelSpec.from_config(config)
    assert (spec.model, spec.use_lora, spec.lora_rank, spec.lora_alpha, spec.lora_init) == (
        config.pretrained.model, True, 4, 2, "gaussian")
    assert spec.frozen_dtype == torch.float32 and spec.gradient_checkpointing == "always"
    recorded = EditModelSpec(config.pretrained.model).with_architecture(spec.architecture())
    assert (recorded.use_lora, recorded.lora_rank, recorded.lora_alpha) == (True, 4, 2)
    assert EditModelSpec.from_config(config, scheduler="ddim").scheduler == "ddim"


def test_an_unknown_backbone_family_is_refused_naming_the_known_ones(tiny_ip2p_path):
    known = r"\['flux_kontext', 'instruct_pix2pix'\]"
    with pytest.raises(ValueError, match=f"unknown backbone family 'flux': choose one of {known}"):
        build_edit_model(EditModelSpec(str(tiny_ip2p_path), family="flux"))
