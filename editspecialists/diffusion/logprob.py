"""Scheduler steps that also return log p(x_{t-1} | x_t): DDIM and Euler-ancestral (ε-predicting
UNets), and the flow-matching SDE step (velocity-predicting transformers, docs/method.md §13).

The functions read only the scheduler's tables (``timesteps``, ``sigmas``, ``alphas_cumprod``)
after ``set_timesteps``; they never use or advance its internal step counter, so training can
visit timesteps in any order. ``timestep`` is a 0-d tensor or a 1-d tensor holding one timestep
per batch element, each taken from ``scheduler.timesteps``: another one is refused, a check that
costs each call one host synchronisation. All arithmetic is done in fp32 on the sample's device.

Sampling and training read :class:`StepTable` instead: every step's coefficients computed once
and read by step number (an int while sampling, a (B,) tensor of step indices in training), so
neither looks a timestep up nor synchronises with the host. The per-timestep functions compute
the same coefficients with the same elementwise (correctly rounded) operations (the tests hold
them against diffusers' schedulers), and training recomputes exactly the log-probabilities that
sampling recorded.

Steps whose noise scale is zero (Euler-ancestral's final step, DDIM with eta 0 or at
alpha_prev = 1, a flow step with noise level 0 or outside the SDE window) are deterministic: they
return log_prob 0 and must not be trained on (see :func:`step_is_stochastic`).

``eta`` is the noise scale of DDIM (its η) and of the flow SDE (its noise level a); Euler-ancestral
ignores it. It is a float or a ``(T,)`` tensor over ``scheduler.timesteps`` (one scale per step:
the SDE window of :func:`windowed_eta`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_element(values: torch.Tensor, batch: int, ndim: int) -> torch.Tensor:
    """Broadcast a 0-d or (batch,) tensor to shape (batch, 1, 1, ...) with ``ndim`` dims."""
    return values.reshape(-1).expand(batch).reshape(batch, *([1] * (ndim - 1)))


def timestep_matches(scheduler, timestep: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Bool ``(..., T)``: which of ``scheduler.timesteps`` each timestep (0-d or (batch,)) equals.

    Raises ValueError naming the timesteps that are not in the table.
    """
    table = scheduler.timesteps.to(device)
    timestep = torch.as_tensor(timestep, device=device).to(table.dtype)
    matches = table == timestep.unsqueeze(-1)
    known = matches.any(dim=-1)
    if not bool(known.all()):
        unknown = sorted(set(timestep[~known].tolist()))
        raise ValueError(f"timesteps {unknown} are not among the scheduler's timesteps {table.tolist()}: "
                         f"the log-prob steps take only timesteps of the schedule set by set_timesteps")
    return matches


def step_indices(scheduler, timestep: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Index of each timestep in ``scheduler.timesteps``: (batch,) or 0-d -> same shape, long
    (:func:`timestep_matches` refuses one not in the table)."""
    return timestep_matches(scheduler, timestep, device).int().argmax(dim=-1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch elements of log N(x; mean, std²): (B, ...) -> (B,).

    Where ``std`` is 0 the density is undefined; those elements give 0.
    """
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    log_density = -((x - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
    log_density = torch.where(stochastic, log_density, torch.zeros_like(log_density))
    return log_density.mean(dim=tuple(range(1, x.ndim)))


def _draw_or_score(mean, std, prev_sample, generator, like):
    """Draw x_{t-1} = mean + std·z (or take the given one) and score it; both fp32."""
    if prev_sample is None:
        noise = randn_tensor(like.shape, generator=generator, device=like.device, dtype=torch.float32)
        prev_sample = mean + std * noise
    prev_sample = prev_sample.to(torch.float32)
    return prev_sample, gaussian_log_prob(prev_sample, mean, std)


def _check_epsilon(scheduler) -> None:
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(
            f"prediction_type={scheduler.config.prediction_type!r} is not supported: the log-prob "
            "steps expect an epsilon-predicting model (InstructPix2Pix is one)."
        )


def _ancestral_split(sigma_from, sigma_to):
    """(sigma_from, sigma_up, sigma_down) of Euler-ancestral steps from sigma_from to sigma_to."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).sqrt()
    sigma_down = (sigma_to**2 - sigma_up**2).clamp_min(0).sqrt()
    return sigma_from, sigma_up, sigma_down


def euler_ancestral_sigmas(scheduler, timestep, device):
    """(sigma_from, sigma_up, sigma_down) of the Euler-ancestral step at ``timestep``, fp32."""
    sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
    index = step_indices(scheduler, timestep, device)
    return _ancestral_split(sigmas[index], sigmas[index + 1])


def _euler_ancestral_update(sigma_from, sigma_up, sigma_down, model_output, sample, prev_sample, generator):
    """x_{t-1} ~ N(x + ε·(σ_down − σ_from), σ_up²), drawn or scored; sigmas broadcast to x."""
    sample = sample.to(torch.float32)
    mean = sample + model_output.to(torch.float32) * (sigma_down - sigma_from)
    return _draw_or_score(mean, sigma_up, prev_sample, generator, sample)


def euler_ancestral_step_with_logprob(
    scheduler, model_output, timestep, sample, prev_sample=None, generator=None
):
    """One Euler-ancestral step with its log-probability.

    Args:
        scheduler: ``EulerAncestralDiscreteScheduler`` after ``set_timesteps``.
        model_output: predicted noise ε, (B, C, h, w), any float dtype.
        timestep: 0-d or (B,) tensor of values from ``scheduler.timesteps``.
        sample: x_t (unscaled), (B, C, h, w).
        prev_sample: x_{t-1} to score; drawn when None.
        generator: torch generator (or list of B) for the drawn noise.

    Returns:
        (prev_sample (B, C, h, w) fp32, log_prob (B,) fp32).
    """
    _check_epsilon(scheduler)
    batch, ndim = sample.shape[0], sample.ndim
    sigmas = euler_ancestral_sigmas(scheduler, timestep, sample.device)
    sigmas = (_per_element(sigma, batch, ndim) for sigma in sigmas)
    return _euler_ancestral_update(*sigmas, model_output, sample, prev_sample, generator)


def ddim_std(scheduler, timestep, device, eta=1.0):
    """(alpha_prod_t, alpha_prod_prev, sigma) of the DDIM step at ``timestep``, fp32."""
    index = step_indices(scheduler, timestep, device)  # refuses a timestep not in the schedule
    return _ddim_coefficients(scheduler, timestep, device, _eta_at(eta, index, device))


def _ddim_coefficients(scheduler, timestep, device, eta):
    """:func:`ddim_std` of timesteps known to be the schedule's, ``eta`` a float or per timestep."""
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    timestep = torch.as_tensor(timestep, device=device).long()
    prev = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float32)
    alpha_t = alphas[timestep]
    alpha_prev = torch.where(prev >= 0, alphas[prev.clamp_min(0)], final)
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    return alpha_t, alpha_prev, eta * variance.clamp_min(0).sqrt()


def _eta_at(eta, index: torch.Tensor, device) -> torch.Tensor | float:
    """The noise scale at step indices ``index``: ``eta`` itself when a float, else its entries
    (a ``(T,)`` tensor over ``scheduler.timesteps``)."""
    if not torch.is_tensor(eta):
        return eta
    return eta.to(device=device, dtype=torch.float32)[index]


def ddim_step_with_logprob(
    scheduler, model_output, timestep, sample, eta=1.0, prev_sample=None, generator=None
):
    """One DDIM step (DDPO formulation) with its log-probability.

    mean = sqrt(ᾱ_prev)·x0 + sqrt(1 − ᾱ_prev − σ²)·ε with
    σ = eta·sqrt((1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)).

    Args:
        scheduler: ``DDIMScheduler`` after ``set_timesteps``.
        model_output: predicted noise ε, (B, C, h, w).
        timestep: 0-d or (B,) tensor of values from ``scheduler.timesteps``.
        sample: x_t, (B, C, h, w).
        eta: noise scale; 0 makes the step deterministic (log_prob 0).
        prev_sample: x_{t-1} to score; drawn when None.
        generator: torch generator (or list of B) for the drawn noise.

    Returns:
        (prev_sample (B, C, h, w) fp32, log_prob (B,) fp32).
    """
    _check_ddim(scheduler)
    batch, ndim = sample.shape[0], sample.ndim
    coefficients = (_per_element(v, batch, ndim) for v in ddim_std(scheduler, timestep, sample.device, eta))
    return _ddim_update(*coefficients, model_output, sample, prev_sample, generator, _clip_range(scheduler))


def _check_ddim(scheduler) -> None:
    _check_epsilon(scheduler)
    if scheduler.config.thresholding:
        raise ValueError("DDIM with thresholding=True is not supported by the log-prob step.")


def _clip_range(scheduler) -> float | None:
    return scheduler.config.clip_sample_range if scheduler.config.clip_sample else None


def _ddim_update(alpha_t, alpha_prev, std, model_output, sample, prev_sample, generator, clip_range):
    """x_{t-1} ~ N(sqrt(ᾱ_prev)·x0 + sqrt(1 − ᾱ_prev − σ²)·ε, σ²), drawn or scored."""
    sample = sample.to(torch.float32)
    epsilon = model_output.to(torch.float32)
    x0 = (sample - (1 - alpha_t).sqrt() * epsilon) / alpha_t.sqrt()
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    direction = (1 - alpha_prev - std**2).clamp_min(0).sqrt() * epsilon
    mean = alpha_prev.sqrt() * x0 + direction
    return _draw_or_score(mean, std, prev_sample, generator, sample)


def flow_sde_split(sigma, sigma_next, eta, sigma_cap):
    """(sample_coef, velocity_coef, std) of flow SDE steps from time ``sigma`` to ``sigma_next``.

    With t = sigma, dt = sigma_next − t (< 0) and σ_t = a·sqrt(t / (1 − t)) (a = ``eta``; at t = 1,
    where it is infinite, 1 − t is replaced by 1 − ``sigma_cap``, the schedule's second time, as
    Flow-GRPO does), the step is x_{t+dt} ~ N(x + [v + σ_t²/(2t)·(x + (1 − t)·v)]·dt, σ_t²·|dt|):
    mean = sample_coef·x + velocity_coef·v, sample_coef = 1 + σ_t²/(2t)·dt,
    velocity_coef = (1 + σ_t²(1 − t)/(2t))·dt, std = σ_t·sqrt(−dt). With a = 0 it is the Euler step
    x + v·dt of ``FlowMatchEulerDiscreteScheduler``.
    """
    dt = sigma_next - sigma
    sigma_t = eta * (sigma / (1 - torch.where(sigma < 1, sigma, sigma_cap))).sqrt()
    drift = sigma_t**2 / (2 * sigma)
    return 1 + drift * dt, (1 + drift * (1 - sigma)) * dt, sigma_t * (-dt).sqrt()


def _flow_sde_update(sample_coef, velocity_coef, std, model_output, sample, prev_sample, generator):
    """x_{t+dt} ~ N(sample_coef·x + velocity_coef·v, std²), drawn or scored; coefficients broadcast."""
    mean = sample.to(torch.float32) * sample_coef + model_output.to(torch.float32) * velocity_coef
    return _draw_or_score(mean, std, prev_sample, generator, sample)


def flow_sde_coefficients(scheduler, timestep, device, eta=0.7):
    """(sample_coef, velocity_coef, std) of the flow SDE step at ``timestep``, fp32 (:func:`flow_sde_split`)."""
    sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
    index = step_indices(scheduler, timestep, device)
    return flow_sde_split(sigmas[index], sigmas[index + 1], _eta_at(eta, index, device), sigmas[1])


def flow_sde_step_with_logprob(scheduler, model_output, timestep, sample, eta=0.7, prev_sample=None,
                               generator=None):
    """One flow-matching SDE step with its log-probability.

    Args:
        scheduler: ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps`` (its ``sigmas`` are
            the flow times, 1 = noise; ``timesteps`` = sigmas·num_train_timesteps).
        model_output: predicted velocity v, (B, ...), any float dtype.
        timestep: 0-d or (B,) tensor of values from ``scheduler.timesteps``.
        sample: x_t, (B, ...) (packed latents (B, L, C) for FLUX).
        eta: the noise level a (float, or (T,) per step); 0 gives the deterministic Euler step.
        prev_sample: x_{t+dt} to score; drawn when None.
        generator: torch generator (or list of B) for the drawn noise.

    Returns:
        (prev_sample (B, ...) fp32, log_prob (B,) fp32).
    """
    _check_flow(scheduler)
    batch, ndim = sample.shape[0], sample.ndim
    coefficients = flow_sde_coefficients(scheduler, timestep, sample.device, eta)
    coefficients = (_per_element(c, batch, ndim) for c in coefficients)
    return _flow_sde_update(*coefficients, model_output, sample, prev_sample, generator)


def _check_flow(scheduler) -> None:
    if getattr(scheduler.config, "stochastic_sampling", False) or getattr(scheduler.config, "invert_sigmas", False):
        raise ValueError("FlowMatchEulerDiscreteScheduler with stochastic_sampling or invert_sigmas is not supported "
                         "by the log-prob step (its own noise is the SDE's)")


def windowed_eta(num_steps: int, eta: float, window: tuple[int, int] | None) -> torch.Tensor | float:
    """The per-step noise scale of an SDE window: ``eta`` on steps ``start <= i < stop`` of
    ``window`` = (start, stop), 0 elsewhere (plain ODE steps, never trained); ``eta`` itself
    (every step) when ``window`` is None. A window outside 0..num_steps is refused."""
    if window is None:
        return eta
    start, stop = window
    if not 0 <= start < stop <= num_steps:
        raise ValueError(f"the SDE window {tuple(window)} must satisfy 0 <= start < stop <= {num_steps} (steps)")
    levels = torch.zeros(num_steps)
    levels[start:stop] = eta
    return levels


# pretrained.scheduler's values -> the diffusers class each log-prob step takes.
SCHEDULER_CLASSES = {"euler_ancestral": EulerAncestralDiscreteScheduler, "ddim": DDIMScheduler,
                     "flow_sde": FlowMatchEulerDiscreteScheduler}


def scheduler_family(scheduler) -> str:
    """The key of :data:`SCHEDULER_CLASSES` whose class ``scheduler`` is; any other scheduler is refused."""
    for family, cls in SCHEDULER_CLASSES.items():
        if isinstance(scheduler, cls):
            return family
    raise ValueError(
        f"{type(scheduler).__name__} has no log-prob step: use EulerAncestralDiscreteScheduler or "
        "DDIMScheduler (config.pretrained.scheduler = 'euler_ancestral' or 'ddim'), or "
        "FlowMatchEulerDiscreteScheduler (a flow-matching editor)."
    )


def is_euler_ancestral(scheduler) -> bool:
    """True for Euler-ancestral, False for the other families; any other scheduler is refused."""
    return scheduler_family(scheduler) == "euler_ancestral"


def step_with_logprob(scheduler, model_output, timestep, sample, *, eta=1.0, prev_sample=None,
                      generator=None):
    """Dispatch to the log-prob step of ``scheduler``'s family (DDIM, Euler-ancestral, flow SDE)."""
    family = scheduler_family(scheduler)
    if family == "euler_ancestral":
        return euler_ancestral_step_with_logprob(
            scheduler, model_output, timestep, sample, prev_sample=prev_sample, generator=generator
        )
    step = ddim_step_with_logprob if family == "ddim" else flow_sde_step_with_logprob
    return step(scheduler, model_output, timestep, sample, eta=eta, prev_sample=prev_sample, generator=generator)


def scale_model_input(scheduler, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """Scale x_t for the model with the sigma of ``timestep`` itself (Euler: 1/sqrt(σ²+1); DDIM
    and flow matching: unscaled)."""
    if not is_euler_ancestral(scheduler):
        return sample
    sigma_from, _, _ = euler_ancestral_sigmas(scheduler, timestep, sample.device)
    return sample * _per_element(_input_scale(sigma_from), sample.shape[0], sample.ndim).to(sample.dtype)


def _input_scale(sigma: torch.Tensor) -> torch.Tensor:
    return (sigma**2 + 1).rsqrt()


def step_is_stochastic(scheduler, *, eta: float = 1.0) -> torch.Tensor:
    """(T,) bool over ``scheduler.timesteps``: True where the step has noise (trainable)."""
    timesteps = scheduler.timesteps
    device = timesteps.device
    family = scheduler_family(scheduler)
    if family == "euler_ancestral":
        _, std, _ = euler_ancestral_sigmas(scheduler, timesteps, device)
    elif family == "ddim":
        _, _, std = ddim_std(scheduler, timesteps, device, eta)
    else:
        _, _, std = flow_sde_coefficients(scheduler, timesteps, device, eta)
    return std > 0


@dataclass(frozen=True)
class StepTable:
    """Every step's coefficients of a schedule after ``set_timesteps``, fp32 on one device.

    ``coefficients`` are (T,) tensors over ``scheduler.timesteps``: Euler-ancestral
    (sigma_from, sigma_up, sigma_down), DDIM (alpha_t, alpha_prev, std), flow SDE (sample_coef,
    velocity_coef, std). :meth:`scale_input` and
    :meth:`step` read them by step number (a view, no lookup, no host sync) and give the same
    values as :func:`scale_model_input` and :func:`step_with_logprob` at that step's timestep.
    """

    input_scale: torch.Tensor
    coefficients: tuple[torch.Tensor, ...]
    update: Callable

    @classmethod
    def of(cls, scheduler, device, *, eta: float = 1.0, lagged_input_scale: bool = False) -> "StepTable":
        """The table of ``scheduler``'s current timesteps (after ``set_timesteps``) on ``device``.

        ``lagged_input_scale`` (the research code's sampler, ``research_code_compat``): Euler-
        ancestral step i ≥ 1 scales its model input with step i − 1's sigma (its custom step never
        advanced the scheduler's step index, which ``scale_model_input`` reads); step 0 with its own.
        """
        steps = len(scheduler.timesteps)
        family = scheduler_family(scheduler)
        if family == "flow_sde":
            _check_flow(scheduler)
            sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
            return cls(torch.ones(steps, device=device),
                       flow_sde_split(sigmas[:steps], sigmas[1:steps + 1], _eta_at(eta, slice(None), device),
                                      sigmas[1]), _flow_sde_update)
        if family == "euler_ancestral":
            _check_epsilon(scheduler)
            sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
            scale_sigmas = torch.cat([sigmas[:1], sigmas[:steps - 1]]) if lagged_input_scale else sigmas[:steps]
            return cls(_input_scale(scale_sigmas), _ancestral_split(sigmas[:steps], sigmas[1:steps + 1]),
                       _euler_ancestral_update)
        _check_ddim(scheduler)
        timesteps = scheduler.timesteps.to(device)
        return cls(torch.ones(steps, device=device),
                   _ddim_coefficients(scheduler, timesteps, device, _eta_at(eta, slice(None), device)),
                   partial(_ddim_update, clip_range=_clip_range(scheduler)))

    def scale_input(self, sample: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
        """x_t (B, ...) of step ``index`` (an int, or a (B,) tensor: one step per element) scaled for
        the model input."""
        return sample * _at(self.input_scale, index, sample).to(sample.dtype)

    def step(self, index: int | torch.Tensor, model_output, sample, *, prev_sample=None, generator=None):
        """Step ``index`` (an int, or a (B,) tensor of step indices: one per element) with its
        log-probability: (prev_sample (B, ...) fp32, log_prob (B,) fp32)."""
        coefficients = (_at(c, index, sample) for c in self.coefficients)
        return self.update(*coefficients, model_output, sample, prev_sample, generator)


def _at(values: torch.Tensor, index: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (T,) at step ``index``: a 0-d tensor for an int, else (B, 1, ...) to broadcast
    against ``like`` (B, ...)."""
    picked = values[index]
    return picked if picked.ndim == 0 else _per_element(picked, like.shape[0], like.ndim)
