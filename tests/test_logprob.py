"""The log-prob step functions against diffusers' own schedulers and the Gaussian formula."""

import math
import re

import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from editspecialists.diffusion import logprob
from editspecialists.diffusion.logprob import (
    StepTable,
    ddim_step_with_logprob,
    euler_ancestral_step_with_logprob,
    flow_sde_step_with_logprob,
    scale_model_input,
    step_is_stochastic,
    step_with_logprob,
    windowed_eta,
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


# ------------------------------------------------------------------------------ flow matching (docs/method.md §13)
# FLUX.1 Kontext [dev]'s scheduler config (tests/fixtures/hub: shift, dynamic shifting and its bounds).
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)


def flow_scheduler(mu: float = 0.8) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    scheduler.set_timesteps(STEPS, mu=mu)
    return scheduler


@pytest.mark.parametrize("index", range(STEPS))
def test_flow_sde_with_noise_level_zero_is_diffusers_euler_step(index):
    scheduler = flow_scheduler()
    assert scheduler.sigmas[0] == 1, "the schedule starts at pure noise (the step capped there)"
    sample, velocity = torch.randn(2, 16, 4), torch.randn(2, 16, 4)  # packed latents (B, L, C)
    timestep = scheduler.timesteps[index]
    scheduler._step_index = index
    expected = scheduler.step(velocity, timestep, sample).prev_sample
    prev, log_prob = flow_sde_step_with_logprob(scheduler, velocity, timestep, sample, eta=0.0)
    assert torch.equal(prev, expected) and torch.equal(log_prob, torch.zeros(2))
    prev, _ = flow_sde_step_with_logprob(scheduler, velocity, timestep, sample, eta=0.7,
                                         generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(prev, expected), "a noise level above 0 draws a different step"


def test_flow_sde_log_prob_is_the_gaussian_of_the_sde_step():
    """Mean, std and density written out from docs/method.md §13 (float64), including the first
    step, at t = 1, whose σ_t uses the schedule's second time."""
    scheduler, a = flow_scheduler(), 0.7
    sigmas = scheduler.sigmas.double()
    sample, velocity = torch.randn(STEPS, 8, 6), torch.randn(STEPS, 8, 6)
    prev = sample + 0.3 * torch.randn(STEPS, 8, 6)
    _, log_prob = flow_sde_step_with_logprob(scheduler, velocity, scheduler.timesteps, sample, eta=a,
                                             prev_sample=prev)
    for i in range(STEPS):
        t, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        sigma_t = a * math.sqrt(t / (1 - (sigmas[1] if t == 1 else t)))
        x, v = sample[i].double(), velocity[i].double()
        mean = x + (v + sigma_t**2 / (2 * t) * (x + (1 - t) * v)) * dt
        expected = gaussian_reference(prev[i:i + 1].double(), mean[None], sigma_t * math.sqrt(-dt))
        torch.testing.assert_close(log_prob[i:i + 1].double(), expected, atol=1e-4, rtol=1e-5)


def test_flow_sde_steps_recompute_what_sampling_drew_in_any_order():
    """The sampler's StepTable draws a step; the per-timestep function (training) scores it to the
    same log-prob, batched over shuffled timesteps as element by element."""
    scheduler = flow_scheduler()
    table = StepTable.of(scheduler, torch.device("cpu"), eta=0.7)
    order = torch.randperm(STEPS)
    sample, velocity = torch.randn(STEPS, 16, 4), torch.randn(STEPS, 16, 4)
    drawn, sampled = zip(*(table.step(int(i), velocity[k:k + 1], sample[k:k + 1],
                                      generator=torch.Generator().manual_seed(k)) for k, i in enumerate(order)))
    drawn, sampled = torch.cat(drawn), torch.cat(sampled)
    _, batched = step_with_logprob(scheduler, velocity, scheduler.timesteps[order], sample, eta=0.7, prev_sample=drawn)
    assert torch.equal(batched, sampled)
    assert torch.equal(scale_model_input(scheduler, sample, scheduler.timesteps[order]), sample)


def test_the_sde_window_makes_only_its_steps_stochastic_and_trainable():
    scheduler = flow_scheduler()
    eta = windowed_eta(STEPS, 0.7, (2, 5))
    assert step_is_stochastic(scheduler, eta=eta).tolist() == [i in (2, 3, 4) for i in range(STEPS)]
    assert step_is_stochastic(scheduler, eta=0.7).all(), "without a window every step (the last too: t > 0)"
    assert step_is_stochastic(make(DDIMScheduler), eta=windowed_eta(STEPS, 1.0, (0, 3))).tolist() == \
        [i < 3 for i in range(STEPS)], "DDIM takes a window too"
    sample, velocity = torch.randn(3, 16, 4), torch.randn(3, 16, 4)
    timesteps = scheduler.timesteps[torch.tensor([1, 3, 6])]
    prev, log_prob = step_with_logprob(scheduler, velocity, timesteps, sample, eta=eta,
                                       generator=torch.Generator().manual_seed(0))
    euler = sample + (scheduler.sigmas[[2, 4, 7]] - scheduler.sigmas[[1, 3, 6]])[:, None, None] * velocity
    assert torch.equal(prev[[0, 2]], euler[[0, 2]]) and (log_prob[[0, 2]] == 0).all()
    assert not torch.allclose(prev[1], euler[1]) and log_prob[1] != 0
    for window in ((3, 3), (-1, 2), (0, STEPS + 1)):
        with pytest.raises(ValueError, match=re.escape(f"the SDE window {window} must satisfy 0 <= start < stop")):
            windowed_eta(STEPS, 0.7, window)


@pytest.mark.parametrize("family", ["euler_ancestral", "ddim", "flow_sde"])
def test_the_step_table_read_by_step_index_tensors_is_the_per_timestep_step_without_a_lookup(family, monkeypatch):
    """Training reads StepTable with a (B,) tensor of step indices: the per-timestep functions'
    values exactly, built and read without looking a timestep up (no host synchronisation)."""
    scheduler = {"euler_ancestral": lambda: make(EulerAncestralDiscreteScheduler),
                 "ddim": lambda: make(DDIMScheduler, clip_sample=False), "flow_sde": flow_scheduler}[family]()
    eta = windowed_eta(STEPS, 0.7, (1, 6)) if family != "euler_ancestral" else 1.0
    index = torch.tensor([5, 0, 3, 3, 1])
    sample, output, prev = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    timesteps = scheduler.timesteps[index]
    _, expected = step_with_logprob(scheduler, output, timesteps, sample, eta=eta, prev_sample=prev)
    expected_input = scale_model_input(scheduler, sample, timesteps)

    def refuse_lookup(*args):
        raise AssertionError("a timestep lookup")

    monkeypatch.setattr(logprob, "timestep_matches", refuse_lookup)
    table = StepTable.of(scheduler, torch.device("cpu"), eta=eta)
    assert torch.equal(table.step(index, output, sample, prev_sample=prev)[1], expected)
    assert torch.equal(table.scale_input(sample, index), expected_input)
