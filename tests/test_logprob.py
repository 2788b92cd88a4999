"""The log-prob step functions against diffusers' own schedulers and the Gaussian formula."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

from editspecialists.diffusion.logprob import (
    ddim_step_with_logprob,
    euler_ancestral_step_with_logprob,
    scale_model_input,
    step_is_stochastic,
    step_with_logprob,
)

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
STEPS = 8


def make(family, **kwargs):
    scheduler = family(**SD_BETAS, **kwargs)
    scheduler.set_timesteps(STEPS)
    return scheduler


def gaussian_reference(x, mean, std):
    """Independent log N(x; mean, std²), averaged over non-batch dims."""
    var = std**2
    return (-(x - mean) ** 2 / (2 * var) - 0.5 * math.log(2 * math.pi * var)).flatten(1).mean(1)


@pytest.mark.parametrize("index", range(STEPS))
def test_euler_ancestral_matches_diffusers(index):
    ours, theirs = make(EulerAncestralDiscreteScheduler), make(EulerAncestralDiscreteScheduler)
    sample, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timestep = ours.timesteps[index]
    theirs._step_index = index
    expected = theirs.step(eps, timestep, sample, generator=torch.Generator().manual_seed(index)).prev_sample
    got, log_prob = euler_ancestral_step_with_logprob(
        ours, eps, timestep, sample, generator=torch.Generator().manual_seed(index))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(log_prob).all() and log_prob.shape == (3,)


@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("index", range(STEPS))
def test_ddim_matches_diffusers(index, clip_sample):
    ours, theirs = make(DDIMScheduler, clip_sample=clip_sample), make(DDIMScheduler, clip_sample=clip_sample)
    sample, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timestep = ours.timesteps[index]
    expected = theirs.step(eps, timestep, sample, eta=1.0,
                           generator=torch.Generator().manual_seed(index)).prev_sample
    got, _ = ddim_step_with_logprob(ours, eps, timestep, sample, eta=1.0,
                                    generator=torch.Generator().manual_seed(index))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_euler_log_prob_is_the_gaussian_of_spec():
    scheduler = make(EulerAncestralDiscreteScheduler)
    index = 2
    sample, eps, prev = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigma_from, sigma_to = scheduler.sigmas[index].double(), scheduler.sigmas[index + 1].double()
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).sqrt()
    sigma_down = (sigma_to**2 - sigma_up**2).sqrt()
    mean = sample.double() + eps.double() * (sigma_down - sigma_from)
    expected = gaussian_reference(prev.double(), mean, sigma_up)
    _, log_prob = euler_ancestral_step_with_logprob(scheduler, eps, scheduler.timesteps[index], sample,
                                                    prev_sample=prev)
    torch.testing.assert_close(log_prob.double(), expected, atol=1e-4, rtol=1e-5)


def test_ddim_log_prob_is_the_gaussian_of_spec():
    scheduler = make(DDIMScheduler, clip_sample=False)
    index, eta = 3, 0.7
    sample, eps, prev = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = int(scheduler.timesteps[index])
    a_t = scheduler.alphas_cumprod[t].double()
    a_prev = scheduler.alphas_cumprod[t - 1000 // STEPS].double()
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    x0 = (sample.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps.double()
    expected = gaussian_reference(prev.double(), mean, sigma)
    _, log_prob = ddim_step_with_logprob(scheduler, eps, scheduler.timesteps[index], sample, eta=eta,
                                         prev_sample=prev)
    torch.testing.assert_close(log_prob.double(), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", [EulerAncestralDiscreteScheduler, DDIMScheduler])
def test_batched_shuffled_timesteps_equal_element_by_element(family):
    scheduler = make(family)
    order = torch.randperm(STEPS - 1)[:5]
    timesteps = scheduler.timesteps[order]
    sample, eps, prev = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    step = euler_ancestral_step_with_logprob if family is EulerAncestralDiscreteScheduler else ddim_step_with_logprob
    _, batched = step(scheduler, eps, timesteps, sample, prev_sample=prev)
    single = torch.cat([step(scheduler, eps[i:i + 1], timesteps[i], sample[i:i + 1], prev_sample=prev[i:i + 1])[1]
                        for i in range(5)])
    torch.testing.assert_close(batched, single)
    scaled = scale_model_input(scheduler, sample, timesteps)
    scaled_single = torch.cat([scale_model_input(scheduler, sample[i:i + 1], timesteps[i]) for i in range(5)])
    torch.testing.assert_close(scaled, scaled_single)


def test_scale_model_input_uses_the_current_sigma():
    scheduler = make(EulerAncestralDiscreteScheduler)
    sample = torch.ones(1, 4, 2, 2)
    for index, timestep in enumerate(scheduler.timesteps):
        expected = 1 / math.sqrt(float(scheduler.sigmas[index]) ** 2 + 1)
        assert scale_model_input(scheduler, sample, timestep).flatten()[0].item() == pytest.approx(expected, rel=1e-5)


def test_final_euler_step_is_finite_and_not_trainable():
    scheduler = make(EulerAncestralDiscreteScheduler)
    sample, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    prev, log_prob = euler_ancestral_step_with_logprob(scheduler, eps, scheduler.timesteps[-1], sample)
    assert torch.isfinite(prev).all() and torch.isfinite(log_prob).all()
    stochastic = step_is_stochastic(scheduler)
    assert stochastic[:-1].all() and not stochastic[-1]


def test_ddim_eta_zero_is_deterministic_and_not_trainable():
    scheduler = make(DDIMScheduler)
    assert not step_is_stochastic(scheduler, eta=0.0).any()
    assert step_is_stochastic(scheduler, eta=1.0)[:-1].all()


def test_low_precision_model_output_is_stepped_in_fp32():
    scheduler = make(EulerAncestralDiscreteScheduler)
    sample = torch.randn(2, 4, 8, 8)
    eps = torch.randn(2, 4, 8, 8).to(torch.bfloat16)
    prev, log_prob = euler_ancestral_step_with_logprob(scheduler, eps, scheduler.timesteps[0], sample)
    assert prev.dtype == torch.float32 and log_prob.dtype == torch.float32
    _, again = euler_ancestral_step_with_logprob(scheduler, eps, scheduler.timesteps[0], sample, prev_sample=prev)
    torch.testing.assert_close(again, log_prob)


def test_unsupported_scheduler_is_refused():
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler(**SD_BETAS)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="PNDMScheduler"):
        step_with_logprob(scheduler, torch.zeros(1, 4, 2, 2), scheduler.timesteps[0], torch.zeros(1, 4, 2, 2))


@pytest.mark.parametrize("family", [EulerAncestralDiscreteScheduler, DDIMScheduler])
def test_a_timestep_outside_the_schedule_is_refused(family):
    """Not looked up as step 0: refused, naming the timestep and the schedule's timesteps."""
    scheduler = make(family)
    timesteps = torch.stack([scheduler.timesteps[2], torch.tensor(5.0), scheduler.timesteps[0]])
    sample = torch.zeros(3, 4, 2, 2)
    with pytest.raises(ValueError, match=r"^timesteps \[5(\.0)?\] are not among the scheduler's timesteps \["):
        step_with_logprob(scheduler, sample, timesteps, sample)
    with pytest.raises(ValueError, match=r"^timesteps \[5(\.0)?\] are not"):
        step_with_logprob(scheduler, sample[:1], torch.tensor(5.0), sample[:1])


@pytest.mark.parametrize("family", [EulerAncestralDiscreteScheduler, DDIMScheduler])
def test_low_precision_model_output_gives_the_fp32_step_of_its_value(family):
    """A bf16 ε is stepped and scored exactly as its fp32 value would be (not in bf16 arithmetic
    and then cast), drawn or scored, for a batch of timesteps."""
    scheduler = make(family, **({"clip_sample": False} if family is DDIMScheduler else {}))
    step = euler_ancestral_step_with_logprob if family is EulerAncestralDiscreteScheduler else ddim_step_with_logprob
    timesteps = scheduler.timesteps[torch.tensor([0, 3, 5])]
    sample = torch.randn(3, 4, 8, 8) * 5
    eps = torch.randn(3, 4, 8, 8).to(torch.bfloat16)
    drawn, log_prob = step(scheduler, eps, timesteps, sample, generator=torch.Generator().manual_seed(0))
    drawn_fp32, log_prob_fp32 = step(scheduler, eps.float(), timesteps, sample,
                                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn, drawn_fp32) and torch.equal(log_prob, log_prob_fp32)
    prev = drawn + 0.05 * torch.randn_like(drawn)  # off the mean: the score depends on ε
    _, scored = step(scheduler, eps, timesteps, sample, prev_sample=prev)
    _, scored_fp32 = step(scheduler, eps.float(), timesteps, sample, prev_sample=prev)
    assert torch.equal(scored, scored_fp32) and scored.dtype == torch.float32
    # not vacuous: rounding the operands to bf16 (as bf16 arithmetic would) moves the score visibly;
    # and bf16 samples are upcast too, so they score as their fp32 values
    _, in_bf16 = step(scheduler, eps, timesteps, sample.to(torch.bfloat16), prev_sample=prev.to(torch.bfloat16))
    _, bf16_reference = step(scheduler, eps.float(), timesteps, sample.to(torch.bfloat16).float(),
                             prev_sample=prev.to(torch.bfloat16).float())
    assert torch.equal(in_bf16, bf16_reference)
    assert (in_bf16 - scored_fp32).abs().max() > 1e-3
