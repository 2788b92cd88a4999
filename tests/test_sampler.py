"""Batched sampling of edits and the training-time recomputation of their log-probs."""

import pytest
import torch

from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.pipeline import encode_images, encode_prompts, load_pipeline
from editspecialists.diffusion.policy import build_policy
from editspecialists.diffusion.sampler import sample_edits, transition_log_probs
from tests.helpers import perturb_style_path

SCALES = GuidanceScales()


def sampling_setup(tiny_ip2p_path, scheduler="euler_ancestral", steps=6, batch=2):
    """(pipeline, fresh LoRA policy, conditioning of random images and two prompts, empty embeds)."""
    pipe = load_pipeline(str(tiny_ip2p_path), scheduler=scheduler)
    policy = build_policy(pipe.unet, use_lora=True)
    pipe.scheduler.set_timesteps(steps)
    images, styles = torch.rand(batch, 3, 32, 32), torch.rand(batch, 3, 32, 32)
    prompts = ["turn the car into lego", "replace the red sports car with lego"][:batch]
    empty = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""])
    cond = EditConditioning(encode_images(pipe.vae, images), encode_images(pipe.vae, styles),
                            encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts), empty)
    return pipe, policy, cond, empty


@pytest.mark.parametrize("scheduler", ["euler_ancestral", "ddim"])
def test_round_trip_log_probs_and_zero_ratio(tiny_ip2p_path, scheduler):
    pipe, policy, cond, empty = sampling_setup(tiny_ip2p_path, scheduler)
    traj = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=3, scales=SCALES, eta=1.0,
                        generator=torch.Generator().manual_seed(0))
    assert traj.images.shape == (2, 3, 3, 32, 32)
    assert traj.latents.shape == (2, 3, 7, 4, 16, 16) and traj.log_probs.shape == (2, 3, 6)
    assert 0 <= traj.images.min() and traj.images.max() <= 1
    trainable = traj.trainable.nonzero().flatten()
    # Euler-ancestral's last step is deterministic (sigma_to = 0); with the real IP2P scheduler
    # config (set_alpha_to_one false) DDIM's last step keeps noise and is trained on.
    if scheduler == "euler_ancestral":
        assert len(trainable) == 5 and not traj.trainable[-1]
    else:
        assert len(trainable) == 6
    for step in trainable.tolist():
        shuffled = torch.tensor([step, trainable[(step + 2) % len(trainable)].item()])
        recomputed = transition_log_probs(policy, pipe.scheduler, traj, shuffled, empty, scales=SCALES)
        reference = transition_log_probs(policy, pipe.scheduler, traj, shuffled, empty, scales=SCALES, reference=True)
        sampled = traj.log_probs[torch.arange(2), :, shuffled]
        assert (recomputed - sampled).abs().max() < 1e-5
        assert torch.equal(recomputed.detach(), reference)


def test_edits_share_initial_noise_but_differ(tiny_ip2p_path):
    pipe, policy, cond, _ = sampling_setup(tiny_ip2p_path)
    traj = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=2, scales=SCALES,
                        generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(traj.latents[:, 0, 0], traj.latents[:, 1, 0])
    assert not torch.allclose(traj.latents[:, 0, 0], traj.latents[0:1, 0, 0].expand(2, -1, -1, -1))
    assert (traj.latents[:, 0, -1] - traj.latents[:, 1, -1]).abs().max() > 1e-3


def test_sampling_is_reproducible_from_the_generator(tiny_ip2p_path):
    pipe, policy, cond, _ = sampling_setup(tiny_ip2p_path)
    runs = [sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=2, scales=SCALES,
                         generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0].latents, runs[1].latents)


def test_one_unet_call_per_step_for_all_edits_and_branches(tiny_ip2p_path):
    pipe, policy, cond, _ = sampling_setup(tiny_ip2p_path, steps=4)
    batches = []
    hook = policy.unet.register_forward_hook(lambda module, args, kwargs_out: batches.append(args[0].shape[0]))
    sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=3, scales=SCALES)
    hook.remove()
    assert batches == [4 * 3 * 2] * 4


def test_policy_gradient_reaches_lora_conv_in_and_style_module(tiny_ip2p_path):
    pipe, policy, cond, empty = sampling_setup(tiny_ip2p_path)
    traj = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=2, scales=SCALES)
    with torch.no_grad():
        policy.unet.conv_in.weight[:, 8:].normal_(0, 0.1)
    log_prob = transition_log_probs(policy, pipe.scheduler, traj, torch.tensor([1, 2]), empty, scales=SCALES)
    log_prob.sum().backward()
    grads = {name: p.grad for name, p in policy.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any("lora" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert policy.unet.conv_in.weight.grad.abs().sum() > 0
    assert policy.style_module.to_out.weight.grad.abs().sum() > 0


def test_perturbed_lora_moves_policy_not_reference(tiny_ip2p_path):
    pipe, policy, cond, empty = sampling_setup(tiny_ip2p_path)
    traj = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=2, scales=SCALES)
    index = torch.tensor([0, 3])
    with torch.no_grad():
        reference_before = transition_log_probs(policy, pipe.scheduler, traj, index, empty, scales=SCALES, reference=True)
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
        reference_after = transition_log_probs(policy, pipe.scheduler, traj, index, empty, scales=SCALES, reference=True)
        policy_after = transition_log_probs(policy, pipe.scheduler, traj, index, empty, scales=SCALES)
    torch.testing.assert_close(reference_after, reference_before)
    assert (policy_after - reference_before).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_autocast_sampling_is_finite(tiny_ip2p_path, dtype):
    pipe, policy, cond, empty = sampling_setup(tiny_ip2p_path)

    def autocast():
        return torch.autocast("cpu", dtype=dtype)

    traj = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=2, scales=SCALES, autocast=autocast)
    assert torch.isfinite(traj.log_probs).all() and torch.isfinite(traj.images).all()
    assert traj.latents.dtype == torch.float32
    recomputed = transition_log_probs(policy, pipe.scheduler, traj, torch.tensor([1, 2]), empty,
                                      scales=SCALES, autocast=autocast)
    assert torch.isfinite(recomputed).all()


def recompute_all(policy, scheduler, traj, empty, order, **kwargs):
    """Log-probs (B, G, T) of every trainable stored transition, recomputed in batches where each
    input sits at its own shuffled step (``order``: (B, K) step indices per input)."""
    recomputed = torch.zeros_like(traj.log_probs)
    rows = torch.arange(order.shape[0])
    for k in range(order.shape[1]):
        recomputed[rows, :, order[:, k]] = transition_log_probs(policy, scheduler, traj, order[:, k], empty,
                                                                scales=SCALES, **kwargs).detach()
    return recomputed


def shuffled_trainable_steps(traj, batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    trainable = traj.trainable.nonzero().flatten()
    return torch.stack([trainable[torch.randperm(len(trainable), generator=generator)] for _ in range(batch)])


@pytest.mark.parametrize("scheduler", ["euler_ancestral", "ddim"])
def test_round_trip_with_active_style_path(tiny_ip2p_path, scheduler, monkeypatch):
    """With conv_in[:, 8:], the CA module and LoRA B all non-zero, the training path scores the
    stored transitions (shuffled, batched timesteps) exactly as sampling did. A training forward
    that fed the noisy latent to the CA module (docs/method.md §2's bug) would not."""
    pipe, policy, cond, empty = sampling_setup(tiny_ip2p_path, scheduler, steps=4)
    kwargs = dict(nb_gen=2, scales=SCALES, eta=1.0)
    initial = sample_edits(policy, pipe.scheduler, pipe.vae, cond, generator=torch.Generator().manual_seed(3), **kwargs)
    perturb_style_path(policy)
    traj = sample_edits(policy, pipe.scheduler, pipe.vae, cond, generator=torch.Generator().manual_seed(3), **kwargs)
    order = shuffled_trainable_steps(traj, batch=2)
    trained = traj.trainable
    assert order.shape[1] == (3 if scheduler == "euler_ancestral" else 4) and (order[0] != order[1]).any()

    recomputed = recompute_all(policy, pipe.scheduler, traj, empty, order)
    assert (recomputed - traj.log_probs)[..., trained].abs().max() < 1e-5

    # the perturbation matters: other edits than the initial model's from the same noise, and the
    # initial model (the reference) scores the perturbed policy's transitions differently
    assert (traj.latents[:, :, -1] - initial.latents[:, :, -1]).abs().max() > 1e-2
    under_initial = recompute_all(policy, pipe.scheduler, traj, empty, order, reference=True)
    assert (under_initial - traj.log_probs)[..., trained].abs().max() > 1e-3
    # ... and so does the style path in particular: other style latents change the scores
    other_style = traj.select(torch.arange(2))
    other_style.style_latents = torch.randn_like(traj.style_latents)
    moved = recompute_all(policy, pipe.scheduler, other_style, empty, order)
    assert (moved - traj.log_probs)[..., trained].abs().max() > 1e-3

    # the original code's bug, simulated: the CA module attends from (style, noisy latent) in the
    # training forward. It must be caught by the round-trip check above.
    module = policy.style_module
    real_forward = module.forward
    calls = []

    def noisy_latent_forward(style_latents, image_latents, text_states):
        calls.append(1)
        return real_forward(style_latents, torch.randn_like(image_latents), text_states)

    monkeypatch.setattr(module, "forward", noisy_latent_forward)
    buggy = recompute_all(policy, pipe.scheduler, traj, empty, order)
    assert calls and (buggy - traj.log_probs)[..., trained].abs().max() > 1e-3


@pytest.mark.parametrize("scheduler", ["euler_ancestral", "ddim"])
def test_bf16_autocast_round_trip(tiny_ip2p_path, scheduler):
    """Under bf16 autocast, recomputation with the same autocast reproduces the sampled log-probs.

    Tolerance 1e-4: both paths run the same bf16 UNet on the same fp32 inputs (only the batch
    composition differs) and step in fp32, so they agree up to fp32 reduction order (~1e-6 here;
    bitwise on CPU). A bf16 rounding of ε alone moves these log-probs by ~1e-3–1e-1 (measured below
    as the fp32 recompute's gap), so 1e-4 still catches a recompute that differs by any bf16 rounding.
    """
    pipe, policy, cond, empty = sampling_setup(tiny_ip2p_path, scheduler, steps=4)
    perturb_style_path(policy)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    traj = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=2, scales=SCALES, eta=1.0,
                        autocast=autocast, generator=torch.Generator().manual_seed(5))
    assert traj.latents.dtype == torch.float32 and traj.log_probs.dtype == torch.float32
    order, trained = shuffled_trainable_steps(traj, batch=2, seed=1), traj.trainable
    recomputed = recompute_all(policy, pipe.scheduler, traj, empty, order, autocast=autocast)
    assert (recomputed - traj.log_probs)[..., trained].abs().max() < 1e-4
    in_fp32 = recompute_all(policy, pipe.scheduler, traj, empty, order)
    assert (in_fp32 - traj.log_probs)[..., trained].abs().max() > 1e-3


def research_code_log_prob(policy, scheduler, traj, empty, step, *, sigma_step, style_query):
    """The research code's log-prob of stored step ``step`` of input 0's edits, written from its
    facts (docs/method.md §2, §3): the style module attends from (style latents, ``style_query``), the noisy
    latent is scaled by 1/sqrt(σ² + 1) with the sigma of step ``sigma_step``, the 4 branches
    (text, image, uncond, image_style) run in one UNet call and are combined with the default scales."""
    nb_gen = traj.latents.shape[1]
    before, after = traj.latents[0, :, step], traj.latents[0, :, step + 1]
    image = traj.image_latents[:1].expand(nb_gen, -1, -1, -1)
    prompt = traj.prompt_embeds[:1].expand(nb_gen, -1, -1)
    style = policy.style_module(traj.style_latents[:1].expand(nb_gen, -1, -1, -1), style_query, prompt)
    zeros, text_empty = torch.zeros_like(style), empty.expand_as(prompt)
    sigma = scheduler.sigmas[sigma_step]
    noisy = (before / (sigma**2 + 1).sqrt()).repeat(4, 1, 1, 1)
    channels = [torch.cat([image, image, zeros, image]), torch.cat([style, zeros, zeros, style])]
    model_input = torch.cat([noisy, *channels], dim=1)
    texts = torch.cat([prompt, text_empty, text_empty, text_empty])
    with torch.no_grad():
        text, image_only, uncond, image_style = policy.unet(model_input, traj.timesteps[step],
                                                            encoder_hidden_states=texts).sample.chunk(4)
    eps = uncond + 1.5 * (image_only - uncond) + 3.0 * (image_style - image_only) + 7.5 * (text - image_style)
    from editspecialists.diffusion.logprob import euler_ancestral_step_with_logprob

    return euler_ancestral_step_with_logprob(scheduler, eps, traj.timesteps[step], before, prev_sample=after)[1]


@pytest.mark.parametrize("compat", [False, True])
def test_research_code_compat_reproduces_both_mismatches(tiny_ip2p_path, compat):
    """research_code_compat on: sampling scaled step i's input with step i-1's sigma (step 0 its
    own) and the training forward's style module attended from the noisy latent, so sampled and
    recomputed log-probs differ as in the original; off: both use step i's sigma and the input
    latent, and they agree (the invariant)."""
    pipe, policy, cond, empty = sampling_setup(tiny_ip2p_path, steps=4, batch=1)
    perturb_style_path(policy)  # the style channels must matter for the attention mismatch to show
    traj = sample_edits(policy, pipe.scheduler, pipe.vae, cond, nb_gen=2, scales=SCALES,
                        generator=torch.Generator().manual_seed(4), research_code_compat=compat)
    image = traj.image_latents[:1].expand(2, -1, -1, -1)
    for step in traj.trainable.nonzero().flatten().tolist():
        with torch.no_grad():
            recomputed = transition_log_probs(policy, pipe.scheduler, traj, torch.tensor([step]), empty,
                                              scales=SCALES, research_code_compat=compat)[0]
        sampled = traj.log_probs[0, :, step]
        noisy = traj.latents[0, :, step]
        sampling_sigma = max(step - 1, 0) if compat else step
        expected_sampled = research_code_log_prob(policy, pipe.scheduler, traj, empty, step,
                                                  sigma_step=sampling_sigma, style_query=image)
        expected_recomputed = research_code_log_prob(policy, pipe.scheduler, traj, empty, step, sigma_step=step,
                                                     style_query=noisy if compat else image)
        torch.testing.assert_close(sampled, expected_sampled, rtol=0, atol=1e-5)
        torch.testing.assert_close(recomputed, expected_recomputed, rtol=0, atol=1e-5)
        gap = (sampled - recomputed).abs().max()
        assert gap > 1e-3 if compat else gap < 1e-5, (step, gap)
