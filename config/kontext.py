"""The method on FLUX.1 Kontext [dev] (ours, docs/method.md §13): config/base.py with the editor
switched to the flow-matching transformer and the settings that change with it.

    accelerate launch scripts/train.py --config config/kontext.py --config.input_name=car ...

Everything else (data, feedback, ranking, the loss, validation, checkpoints) is config/base.py's;
generate.py, evaluate.py, the export, the specialist pipeline and the app take its specialists.
"""

import importlib.util
from pathlib import Path


def _base():
    spec = importlib.util.spec_from_file_location("base_config", Path(__file__).with_name("base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _base()
    config.pretrained.model = "black-forest-labs/FLUX.1-Kontext-dev"  # any FluxKontextPipeline id or folder
    config.pretrained.family = "flux_kontext"
    config.pretrained.scheduler = "flow_sde"
    # The frozen 12B transformer and the encoders in bf16 (trainable LoRA, x_embedder and style
    # module stay fp32); activations recomputed in the backward pass.
    config.mixed_precision = "bf16"
    config.gradient_checkpointing = "always"
    config.sample.num_steps = 28  # the pipeline's default
    config.sample.guidance_scale = 2.5  # the distilled guidance (the pipeline's default)
    config.sample.eta = 0.7  # the SDE noise level a (Flow-GRPO's)
    config.data_resize = 512  # a multiple of 16 (2x2 patches of 8x8 pixel blocks)
    return config
