"""The update machinery learns on a toy policy within seconds (issue 8).

The toy policy predicts a learnable per-channel constant noise; the reward is the mean of the
final latent. It runs through the trainer's own sampler, log-prob recomputation, ranking and
preference loss, so a sign, ordering or reference bug shows up as a reward that does not rise.
"""

from contextlib import contextmanager

import torch
from diffusers import EulerAncestralDiscreteScheduler
from torch import nn

from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.sampler import sample_edits, transition_log_probs
from editspecialists.training.ranking import combine_scores, preference_loss, rank_edits, standardization_groups


class ToyPolicy(nn.Module):
    """ε = a learnable constant per latent channel; the reference keeps the initial constant."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(4))
        self._reference = False

    def forward(self, scaled_latents, timesteps, cond, scales):
        bias = torch.zeros(4) if self._reference else self.bias
        return bias.view(1, 4, 1, 1).expand_as(scaled_latents)

    @contextmanager
    def reference(self):
        self._reference = True
        try:
            yield self
        finally:
            self._reference = False


class IdentityDecoder:
    """Stands in for the VAE: the toy reward reads latents, not pixels."""

    class config:
        latent_channels = 4
        scaling_factor = 1.0

    device, dtype = torch.device("cpu"), torch.float32

    def decode(self, latents):
        return type("Decoded", (), {"sample": latents[:, :3]})


def test_toy_policy_reward_rises():
    torch.manual_seed(0)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    scheduler.set_timesteps(10)
    policy = ToyPolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    batch, scales = 16, GuidanceScales()
    empty = torch.zeros(1, 1, 1)
    cond = EditConditioning(torch.zeros(batch, 4, 4, 4), torch.zeros(batch, 4, 4, 4), torch.zeros(batch, 1, 1), empty)
    generator = torch.Generator().manual_seed(0)
    rewards, first_stats = [], None
    for epoch in range(25):
        trajectories = sample_edits(policy, scheduler, IdentityDecoder(), cond, nb_gen=2, scales=scales,
                                    generator=generator)
        reward = trajectories.latents[:, :, -1].mean(dim=(2, 3, 4))
        rewards.append(reward.mean().item())
        groups = standardization_groups("batch", [batch], num_processes=1)
        order, has_preference = rank_edits(combine_scores({"r": reward}, {"r": 1.0}, {"r": False}, groups))
        for step in trajectories.trainable.nonzero().flatten():
            index = step.repeat(batch)
            log_prob = transition_log_probs(policy, scheduler, trajectories, index, empty, scales=scales)
            reference = transition_log_probs(policy, scheduler, trajectories, index, empty, scales=scales,
                                             reference=True)
            loss, stats, _ = preference_loss(log_prob, reference, order, has_preference, eps=0.1, beta=0.1)
            if first_stats is None:
                first_stats = (loss.item(), stats.ratio_mean.item(), stats.clipfrac.item())
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert abs(first_stats[0] - 0.6931) < 1e-3 and first_stats[1:] == (1.0, 0.0)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 1.0, f"reward did not rise: {rewards}"
