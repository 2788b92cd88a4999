"""Visual-prompt policy construction and its frozen reference (docs/method.md §2)."""

import pytest
import torch

from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.pipeline import load_pipeline
from editspecialists.diffusion.policy import StylePromptAttention, build_policy, first_cross_attention
from tests.helpers import perturb_style_path


@pytest.fixture
def pipe(tiny_ip2p_path):
    return load_pipeline(str(tiny_ip2p_path))


def random_cond(unet, batch=2, size=8, length=77):
    dim = unet.config.cross_attention_dim
    return EditConditioning(torch.randn(batch, 4, size, size), torch.randn(batch, 4, size, size),
                            torch.randn(batch, length, dim), torch.randn(1, length, dim))


def plain_ip2p_epsilon(unet, latents, timestep, cond, scales):
    """The original 3-branch InstructPix2Pix guidance on an untouched 8-channel UNet."""
    zeros = torch.zeros_like(cond.image_latents)
    empty = cond.empty_embeds.expand_as(cond.prompt_embeds)
    model_input = torch.cat([torch.cat([latents] * 3), torch.cat([cond.image_latents, cond.image_latents, zeros])], 1)
    text = torch.cat([cond.prompt_embeds, empty, empty])
    eps_text, eps_image, eps_uncond = unet(model_input, timestep, encoder_hidden_states=text).sample.chunk(3)
    return eps_uncond + scales.text * (eps_text - eps_image) + scales.image * (eps_image - eps_uncond)


@pytest.mark.parametrize("use_lora", [True, False])
def test_policy_starts_as_instruct_pix2pix_for_any_style(tiny_ip2p_path, use_lora):
    original = load_pipeline(str(tiny_ip2p_path)).unet
    policy = build_policy(load_pipeline(str(tiny_ip2p_path)).unet, use_lora=use_lora)
    cond = random_cond(original)
    latents, timestep, scales = torch.randn(2, 4, 8, 8), torch.tensor(500.0), GuidanceScales()
    with torch.no_grad():
        expected = plain_ip2p_epsilon(original, latents, timestep, cond, scales)
        for _ in range(2):
            cond.style_latents = torch.randn_like(cond.style_latents) * 5
            torch.testing.assert_close(policy(latents, timestep, cond, scales), expected, atol=1e-5, rtol=1e-4)


def test_conv_in_is_widened_with_zero_style_channels(pipe):
    old_weight, old_bias = pipe.unet.conv_in.weight.clone(), pipe.unet.conv_in.bias.clone()
    policy = build_policy(pipe.unet, use_lora=True)
    conv = policy.unet.conv_in
    assert conv.in_channels == 12 and policy.unet.config.in_channels == 12
    torch.testing.assert_close(conv.weight[:, :8], old_weight)
    assert conv.weight[:, 8:].abs().sum() == 0
    torch.testing.assert_close(conv.bias, old_bias)
    assert conv.weight.requires_grad and conv.weight.dtype == torch.float32


def test_style_module_initialisation_follows_spec(pipe):
    attn = first_cross_attention(pipe.unet)
    module = StylePromptAttention.from_unet(pipe.unet)
    inner, text_dim = attn.to_v.weight.shape
    torch.testing.assert_close(module.to_k.weight, attn.to_k.weight)
    torch.testing.assert_close(module.to_v.weight, attn.to_v.weight)
    group = text_dim // 8
    expected_q = torch.stack([attn.to_v.weight[:, g * group:(g + 1) * group].mean(1) for g in range(8)], dim=1)
    torch.testing.assert_close(module.to_q.weight, expected_q)
    assert module.to_q.weight.shape == (inner, 8) and module.to_out.weight.shape == (4, inner)
    assert module.num_heads == 8 and module.to_q.bias is None


def test_style_module_output_shape_and_prompt_dependence(pipe):
    module = StylePromptAttention.from_unet(pipe.unet)
    style, image = torch.randn(2, 4, 6, 5), torch.randn(2, 4, 6, 5)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    out = module(style, image, text)
    assert out.shape == (2, 4, 6, 5)
    assert not torch.allclose(out, module(style, image, torch.randn_like(text)))


def test_reference_is_frozen_initial_model_after_lora_update(pipe):
    policy = build_policy(pipe.unet, use_lora=True)
    cond = random_cond(policy.unet)
    latents, timestep, scales = torch.randn(2, 4, 8, 8), torch.tensor(300.0), GuidanceScales()
    with torch.no_grad():
        before = policy(latents, timestep, cond, scales)
        for name, param in policy.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
        with policy.reference():
            reference = policy(latents, timestep, cond, scales)
        after = policy(latents, timestep, cond, scales)
    torch.testing.assert_close(reference, before, atol=1e-5, rtol=1e-4)
    assert (after - before).abs().max() > 1e-3
    assert policy.unet.conv_in.weight[:, 8:].abs().sum() > 0, "the trained conv_in is restored"


def test_the_reference_computes_on_the_device_it_is_given_and_goes_back(pipe, monkeypatch):
    """policy.reference(device=...) (what a pipeline under model offload passes: its hooks move only
    its registered components) moves the frozen initial modules there for the block only."""
    policy = build_policy(pipe.unet, use_lora=True)
    parts, moves = policy._reference_parts, []
    monkeypatch.setattr(parts, "to", lambda device: moves.append(str(device)) or parts)
    with policy.reference(device="cuda:1"):
        assert moves == ["cuda:1"] and policy.active_style_module is parts.style_module
    assert moves == ["cuda:1", "cpu"] and policy.active_style_module is policy.style_module
    with policy.reference():
        assert moves == ["cuda:1", "cpu"]
    assert moves == ["cuda:1", "cpu"]


def count_parameters(module):
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def test_lora_reference_holds_no_second_unet(tiny_ip2p_path):
    unet_size = count_parameters(load_pipeline(str(tiny_ip2p_path)).unet)
    lora = build_policy(load_pipeline(str(tiny_ip2p_path)).unet, use_lora=True)
    full = build_policy(load_pipeline(str(tiny_ip2p_path)).unet, use_lora=False)
    assert count_parameters(lora) < 1.3 * unet_size
    assert count_parameters(full) > 1.9 * unet_size
    trainable_lora = sum(p.numel() for p in lora.trainable_parameters())
    assert trainable_lora < 0.2 * unet_size
    assert set(lora.trainable_state_dict()) == {n for n, p in lora.named_parameters() if p.requires_grad}
    assert not any("_reference_parts" in name for name in lora.trainable_state_dict())


def test_rejects_a_non_ip2p_unet(pipe):
    build_policy(pipe.unet, use_lora=True)
    with pytest.raises(ValueError, match="8 input channels"):
        build_policy(pipe.unet, use_lora=True)


def test_four_branches_are_built_as_the_spec_table_says(pipe):
    """Guided ε equals the docs/method.md §2 formula over four separate UNet calls, one per branch, on a
    policy whose style channels matter; distinct scales so any mixed-up branch or term shows."""
    policy = build_policy(pipe.unet, use_lora=True)
    perturb_style_path(policy)
    cond = random_cond(policy.unet)
    latents, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([700.0, 150.0])
    scales = GuidanceScales(text=5.0, image=2.0, style=0.7)
    with torch.no_grad():
        style = policy.style_module(cond.style_latents, cond.image_latents, cond.prompt_embeds)
        zeros, empty = torch.zeros_like(style), cond.empty_embeds.expand_as(cond.prompt_embeds)

        def branch(text, image, style_channels):
            model_input = torch.cat([latents, image, style_channels], dim=1)
            return policy.unet(model_input, timesteps, encoder_hidden_states=text).sample

        eps_text = branch(cond.prompt_embeds, cond.image_latents, style)
        eps_image = branch(empty, cond.image_latents, zeros)
        eps_uncond = branch(empty, torch.zeros_like(cond.image_latents), zeros)
        eps_image_style = branch(empty, cond.image_latents, style)
        expected = (eps_uncond + 2.0 * (eps_image - eps_uncond) + 0.7 * (eps_image_style - eps_image)
                    + 5.0 * (eps_text - eps_image_style))
        got = policy(latents, timesteps, cond, scales)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # not vacuous: every pair of branches the formula contrasts really differs
    for a, b in ((eps_text, eps_image_style), (eps_image_style, eps_image), (eps_image, eps_uncond)):
        assert (a - b).abs().max() > 1e-3
    assert style.abs().max() > 1e-3


def lora_a_values_by_fan_in(policy) -> dict[int, torch.Tensor]:
    """Every initial LoRA A entry, pooled by the fan-in of its matrix (r × fan_in)."""
    pooled: dict[int, list[torch.Tensor]] = {}
    for name, param in policy.unet.named_parameters():
        if "lora_A" in name:
            pooled.setdefault(param.shape[1], []).append(param.detach().flatten())
    return {fan_in: torch.cat(values) for fan_in, values in pooled.items()}


@pytest.mark.parametrize("rank", [4, 8])
def test_default_lora_init_is_peft_kaiming_uniform(tiny_ip2p_path, rank):
    """peft's default: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Kaiming-uniform, a = sqrt 5), so
    std 1/sqrt(3 fan_in) for each fan-in; B zero (the policy starts as the base model)."""
    torch.manual_seed(0)
    policy = build_policy(load_pipeline(str(tiny_ip2p_path)).unet, use_lora=True, lora_rank=rank, lora_alpha=rank)
    by_fan_in = lora_a_values_by_fan_in(policy)
    assert len(by_fan_in) >= 2, "the tiny UNet has attention projections of several fan-ins"
    for fan_in, values in by_fan_in.items():
        assert values.abs().max() <= fan_in ** -0.5, fan_in
        assert values.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.1), fan_in
    assert all(p.abs().sum() == 0 for n, p in policy.unet.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("rank", [4, 8])
def test_gaussian_lora_init_has_std_one_over_rank(tiny_ip2p_path, rank):
    """peft's "gaussian": A ~ N(0, std 1/r) whatever the fan-in."""
    torch.manual_seed(0)
    policy = build_policy(load_pipeline(str(tiny_ip2p_path)).unet, use_lora=True, lora_rank=rank,
                          lora_alpha=rank, lora_init="gaussian")
    for fan_in, values in lora_a_values_by_fan_in(policy).items():
        assert values.std().item() == pytest.approx(1 / rank, rel=0.1), fan_in
        assert values.mean().abs().item() < 0.2 / rank, fan_in


def test_unknown_lora_init_names_the_key(pipe):
    with pytest.raises(ValueError, match="lora_init must be one of .*'default'.*got 'kaiming'"):
        build_policy(pipe.unet, use_lora=True, lora_init="kaiming")


@pytest.mark.parametrize("setting, use_lora, expected", [
    ("without_lora", False, True), ("without_lora", True, False),
    ("always", True, True), ("never", False, False)])
def test_gradient_checkpointing_follows_the_setting(tiny_ip2p_path, setting, use_lora, expected):
    from editspecialists.diffusion.bundle import EditModelSpec, build_edit_model

    spec = EditModelSpec(str(tiny_ip2p_path), use_lora=use_lora, lora_rank=4, lora_alpha=4,
                         gradient_checkpointing=setting)
    assert build_edit_model(spec).policy.unet.is_gradient_checkpointing == expected


def test_unknown_gradient_checkpointing_names_the_key(pipe):
    from editspecialists.diffusion.policy import uses_gradient_checkpointing

    with pytest.raises(ValueError, match="gradient_checkpointing must be one of .*got True"):
        uses_gradient_checkpointing(True, use_lora=False)
