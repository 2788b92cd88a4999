"""One of two CPU processes (torchrun, gloo) for tests/test_fsdp.py: the tiny Kontext policy computed
whole, then sharded with FSDP2 (``fully_shard``) as config/accelerate_fsdp.yaml has accelerate
wrap it (one unit per class it names, then the whole policy), computed again: in full precision,
and with the mixed-precision policy accelerate gives FSDP2 for ``mixed_precision="bf16"`` (weights
gathered in bf16, gradients reduced in bf16, forward inputs cast to bf16).

argv: tiny Kontext folder, the accelerate config file, output JSON (written by rank 0).
"""

import json
import sys

import torch
import torch.distributed as dist
import yaml
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from editspecialists.diffusion.bundle import EditModelSpec, build_edit_model
from editspecialists.diffusion.guidance import GuidanceScales
from editspecialists.diffusion.pipeline import FLOW_SDE, FLUX_KONTEXT
from editspecialists.diffusion.sampler import sample_edits, transition_log_probs
from editspecialists.launch import end_process_group
from editspecialists.training.gather import full_tensors

SIZE, STEPS, SCALES = 32, 3, GuidanceScales(text=2.5)


def bf16_autocast():
    """The trainer's ``accelerator.autocast`` with mixed_precision "bf16", on the CPU."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def perturbed_policy(path: str):
    """The policy in bf16 over fp32 trainables, its trainable weights moved from their start (the
    same on every process) so that it differs from its frozen reference."""
    model = build_edit_model(EditModelSpec(path, scheduler=FLOW_SDE, family=FLUX_KONTEXT, scales=SCALES, lora_rank=4,
                                           lora_alpha=4, frozen_dtype=torch.bfloat16))
    model.set_timesteps(STEPS, SIZE)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.policy.trainable_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


def computed(model, cond) -> dict:
    """Sampled latents and log-probs, the policy's and the reference's recomputed log-probs at two
    step indices, and the gradients of their sum (whole tensors)."""
    policy = model.policy
    settings = {"scales": SCALES, "eta": 0.7, "autocast": bf16_autocast}
    trajectories = sample_edits(policy, model.scheduler, model.vae, cond, nb_gen=2,
                                generator=torch.Generator().manual_seed(1), **settings)
    steps = torch.tensor([0, 2])
    log_prob = transition_log_probs(policy, model.scheduler, trajectories, steps, None, **settings)
    reference = transition_log_probs(policy, model.scheduler, trajectories, steps, None, reference=True, **settings)
    log_prob.sum().backward()
    grads = full_tensors({name: param.grad for name, param in policy.named_parameters() if param.requires_grad})
    sampled_there = trajectories.log_probs[torch.arange(len(steps)), :, steps]
    return {"latents": trajectories.latents, "sampled": trajectories.log_probs, "log_prob": log_prob.detach(),
            "reference": reference, "recomputed_minus_sampled": log_prob.detach() - sampled_there,
            **{f"grad/{name}": grad for name, grad in grads.items()}}


def shard(policy, wrapped_classes: list[str], mixed_precision: MixedPrecisionPolicy) -> None:
    """FSDP2 as accelerate's TRANSFORMER_BASED_WRAP applies it: the named classes, then the root."""
    for module in list(policy.modules()):
        if type(module).__name__ in wrapped_classes:
            fully_shard(module, mp_policy=mixed_precision)
    fully_shard(policy, mp_policy=mixed_precision)


def differences(found: dict, expected: dict) -> dict:
    return {name: (found[name].float() - value.float()).abs().max().item() for name, value in expected.items()}


def main(path: str, accelerate_config: str, out: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    wrapped = yaml.safe_load(open(accelerate_config))["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
    model = perturbed_policy(path)
    images = torch.rand(2, 2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    cond = model.conditioning(images[0], images[1], ["turn the car into lego", "turn the car into a lego car"])
    whole = computed(model, cond)
    whole_state = {name: value.clone() for name, value in model.policy.trainable_state_dict().items()}
    model.policy.zero_grad()

    shard(model.policy, wrapped, MixedPrecisionPolicy())
    sharded = [param for param in model.policy.parameters() if hasattr(param, "to_local")]
    held = sum(param.to_local().numel() for param in sharded) / sum(param.numel() for param in sharded)
    parts = computed(model, cond)
    state = full_tensors(model.policy.trainable_state_dict())

    in_bf16 = perturbed_policy(path)
    shard(in_bf16.policy, wrapped, MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16))
    bf16_parts = computed(in_bf16, cond)
    if dist.get_rank() == 0:
        json.dump({"held": held, "sharded_parameters": len(sharded),
                   "units": sum(isinstance(module, FSDPModule) for module in model.policy.modules()),
                   "max_difference": differences(parts, whole), "bf16_max_difference": differences(bf16_parts, whole),
                   "state_equal": sorted(state) == sorted(whole_state) and all(
                       torch.equal(state[name], whole_state[name]) for name in state)},
                  open(out, "w"))
    end_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
