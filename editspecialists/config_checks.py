"""Config keys checked before anything loads: the kinds of check, the rules of the keys generation
and training share, and generation's check. Training's and evaluation's own keys have their
tables beside their code (``training/config_rules.py``, ``evaluation/config_rules.py``).

Each script's keys are a table of :class:`Rule` (key, check); a check returns what the value must
be when it is wrong, so every error is one line naming the key, the allowed values and the value
given: ``train.learning_rate must be > 0, got -0.001``. All wrong keys are reported at once, one
line each, in one ``ValueError``.

Types are checked as well: ml_collections lets ``True`` into an integer key and ``None`` into any
key, and a config built in Python or read from a run's config.json has no types at all.
Model ids are checked by :mod:`editspecialists.model_ids` (training and generation call it before
loading; evaluation skips a family whose model cannot load, by design).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from dataclasses import dataclass
from typing import Callable

from editspecialists.data.dataset import GENERATION_PROMPTS
from editspecialists.data.images import RESIZE_FILTERS
from editspecialists.data.manifest import EDIT_FORMATS
from editspecialists.diffusion.pipeline import FAMILIES, FLOW_SCHEDULERS, FLUX_KONTEXT, SCHEDULERS
from editspecialists.diffusion.policy import GRADIENT_CHECKPOINTING, LORA_INITS
from editspecialists.config_keys import parse_sde_window, value_at
from editspecialists.model_ids import validate_model_ids

MAX_SEED = 2**32 - 1  # numpy's global seed (set by accelerate's set_seed) takes no more

# A check returns what the value must be ("must be >= 1") when it is wrong, else None.
Check = Callable[[object], "str | None"]
_MISSING = object()


@dataclass(frozen=True)
class Rule:
    """``key``'s value must pass ``check`` (only where ``applies(config)``); ``why`` follows the
    requirement in the message."""

    key: str
    check: Check
    why: str = ""
    applies: Callable[[object], bool] = lambda config: True


# ------------------------------------------------------------------------------ kinds of check
def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``, or empty without bounds."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def _within(value, low, high, low_open: bool, high_open: bool) -> bool:
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return above and below


def integer(low=None, high=None) -> Check:
    """An int (not a bool) in ``[low, high]``."""
    return _ranged(_is_integer, "an integer", low, high, False, False)


def number(low=None, high=None, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A finite int or float (not a bool) between ``low`` and ``high`` (open ends as told)."""
    return _ranged(is_finite_number, "a finite number", low, high, low_open, high_open)


def _ranged(is_kind: Callable[[object], bool], kind: str, low, high, low_open: bool, high_open: bool) -> Check:
    """A value of a kind (``is_kind``, named ``kind`` in messages) within the bounds."""
    bounds = _bounds(low, high, low_open, high_open)

    def check(value):
        if not is_kind(value):
            return f"must be {kind} {bounds}".rstrip()
        return None if _within(value, low, high, low_open, high_open) else f"must be {bounds}"

    return check


def multiple_of(factor: int) -> Check:
    """A positive int divisible by ``factor``."""
    def check(value):
        ok = _is_integer(value) and value > 0 and value % factor == 0
        return None if ok else f"must be a positive multiple of {factor}"

    return check


def one_of(options) -> Check:
    def check(value):
        return None if isinstance(value, str) and value in options else f"must be one of {list(options)}"

    return check


def boolean(value):
    return None if isinstance(value, bool) else "must be True or False"


def text(value):
    return None if isinstance(value, str) else "must be a string"


def name(value):
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def sde_window(value):
    """"" or "start:stop" (whole numbers)."""
    if not isinstance(value, str):
        return "must be a string: \"\" or \"start:stop\""
    try:
        parse_sde_window(value)
    except ValueError:
        return "must be \"\" (every step) or \"start:stop\" (two whole numbers)"
    return None


def _is_kontext(config) -> bool:
    return value_at(config, "pretrained.family", None) == FLUX_KONTEXT


def _has_window(config) -> bool:
    return bool(str(value_at(config, "sample.sde_window", "")).strip())


def xformers_switch(value):
    """A bool; True only where the xformers package is installed."""
    if value is True and importlib.util.find_spec("xformers") is None:
        return "must be False: True needs the xformers package (pip install xformers)"
    return boolean(value)


# ------------------------------------------------------------------------------ the tables
def _uses_lora(config) -> bool:
    return value_at(config, "use_lora") is True


SEED = integer(0, MAX_SEED)
THRESHOLD = number(0, 1)  # detector score thresholds

# What generation and training read alike (generation from its own config).
SHARED_RULES = (
    Rule("seed", SEED),
    Rule("load_checkpoint", text),
    Rule("demo_root", text),
    Rule("overwrite", boolean),
    Rule("inputimg_dir", text),
    Rule("styleimg_dir", text),
    Rule("input_name", name),
    Rule("style_name", name),
    Rule("whole_frame", boolean),
    Rule("data_resize", multiple_of(16), "with pretrained.family 'flux_kontext' (2x2 patches of 8x8 pixel "
         "blocks)", _is_kontext),
    Rule("data_resize", multiple_of(8), "(the VAE works on 8x8 pixel blocks)"),
    Rule("resize_filter", one_of(RESIZE_FILTERS)),
    Rule("research_code_compat", boolean),
    Rule("use_xformers", xformers_switch),
    Rule("pretrained.family", one_of(FAMILIES)),
    Rule("pretrained.max_sequence_length", integer(1, 512), "(T5 tokens per prompt, FLUX Kontext)"),
    Rule("pretrained.scheduler", one_of(FLOW_SCHEDULERS), "with pretrained.family 'flux_kontext'", _is_kontext),
    Rule("pretrained.scheduler", one_of(SCHEDULERS), "with pretrained.family 'instruct_pix2pix'",
         lambda config: not _is_kontext(config)),
    Rule("sample.num_steps", integer(1)),
    Rule("sample.sde_window", sde_window, "(steps start..stop-1 stochastic, the rest deterministic)", _has_window),
    Rule("sample.sde_window", one_of([""]), "with the euler_ancestral scheduler (its steps' noise is fixed)",
         lambda config: _has_window(config) and value_at(config, "pretrained.scheduler", None) == "euler_ancestral"),
    Rule("sample.eta", number(0)),
    Rule("sample.guidance_scale", number()),
    Rule("sample.image_guidance_scale", number()),
    Rule("sample.style_image_guidance_scale", number()),
    Rule("sample.batch_size", integer(1)),
    Rule("sample.sample_savedir", text),
    Rule("sample.generation_prompt", one_of(GENERATION_PROMPTS)),
    Rule("sample.edit_format", one_of(EDIT_FORMATS)),
    Rule("sample.generation_autocast", boolean),
)

# What defines the policy: the run's config (a checkpoint's own when generating from one).
POLICY_RULES = (
    Rule("pretrained.revision", text),
    Rule("use_lora", boolean),
    Rule("lora_rank", integer(1), "with use_lora", _uses_lora),
    Rule("lora_alpha", number(0, low_open=True), "with use_lora", _uses_lora),
    Rule("lora_init", one_of(LORA_INITS)),
    Rule("gradient_checkpointing", one_of(GRADIENT_CHECKPOINTING)),
    Rule("lora_targets", text, "(comma-separated module names; \"\" for the family's)"),
)

# ------------------------------------------------------------------------------ checking
def problems(config, rules) -> list[str]:
    """One line per key of ``rules`` that ``config`` gets wrong (the first failed rule of each)."""
    found = {}
    for rule in rules:
        if rule.key in found or not rule.applies(config):
            continue
        value = value_at(config, rule.key, _MISSING)
        if value is _MISSING:
            found[rule.key] = f"{rule.key} is missing from the config"
            continue
        requirement = rule.check(value)
        if requirement:
            why = f" {rule.why}" if rule.why else ""
            shown = value.to_dict() if hasattr(value, "to_dict") else value  # a ConfigDict's repr is YAML
            found[rule.key] = f"{rule.key} {requirement}{why}, got {shown!r}"
    return list(found.values())


def check_rules(config, rules) -> None:
    """Raise one ``ValueError`` listing every key of ``rules`` that ``config`` gets wrong."""
    found = problems(config, rules)
    if found:
        raise ValueError("\n".join(found))


def validate_generation_config(config, run_config=None) -> None:
    """Refuse a generation config naming each key at fault, then the policy keys and the model id
    of ``run_config``, the config that defines the model (a checkpoint's run config; default
    ``config``). Reads no model and no image."""
    run_config = config if run_config is None else run_config
    check_rules(config, SHARED_RULES)
    check_rules(run_config, POLICY_RULES)
    validate_model_ids({"pretrained.model": run_config.pretrained.model},
                       {"pretrained.model": run_config.pretrained.revision})
