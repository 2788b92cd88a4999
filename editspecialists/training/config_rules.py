"""The keys of a training config (config/base.py), checked before anything loads (see
:mod:`editspecialists.config_checks` for the kinds of check)."""

from __future__ import annotations

from editspecialists.config_checks import (POLICY_RULES, SHARED_RULES, THRESHOLD, Rule, boolean, check_rules,
                                           integer, is_finite_number, number, one_of, text)
from editspecialists.config_keys import value_at
from editspecialists.precision import DTYPES, MIXED_PRECISION
from editspecialists.rewards.depth import ALIGNMENTS
from editspecialists.rewards.masks import MASK_FALLBACKS
from editspecialists.rewards.needs import SEMANTIC_BACKBONE_KEYS
from editspecialists.rewards.registry import SCORES
from editspecialists.training.ranking import RANKINGS, STANDARDIZE_MODES


def score_weights(weights):
    """``{registered score: finite weight}``, at least one weight non-zero."""
    if not hasattr(weights, "items") or not len(weights):
        return "must name at least one score ({score: weight})"
    unknown = [score for score in weights.keys() if score not in SCORES]
    if unknown:
        return f"must name registered scores ({', '.join(SCORES)}); unknown: {', '.join(map(str, unknown))}"
    if not all(is_finite_number(weight) for weight in weights.values()):
        return "must map each score to a finite number"
    if not any(weights.values()):
        return "must have a non-zero weight (else every edit ties and nothing is learnt)"
    return None


def score_list(value):
    """``"auto"`` or a comma-separated list of registered scores."""
    if not isinstance(value, str):
        return "must be a string: \"auto\" or comma-separated score names"
    if value.strip() == "auto":
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCORES]
    if not names or unknown:
        return (f"must be \"auto\" or comma-separated registered scores ({', '.join(SCORES)})"
                + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return None


def _uses_ddim(config) -> bool:
    return value_at(config, "pretrained.scheduler") == "ddim"


TRAINING_RULES = SHARED_RULES + POLICY_RULES + (
    Rule("run_name", text),
    Rule("logdir", text),
    Rule("num_epochs", integer(1)),
    Rule("save_freq", integer(1)),
    Rule("num_checkpoint_limit", integer(0), "(0 keeps all)"),
    Rule("mixed_precision", one_of(MIXED_PRECISION)),
    Rule("allow_tf32", boolean),
    Rule("wandb_project", text),
    Rule("sample.eta", number(0, low_open=True), "with the DDIM scheduler (eta 0 has no log-probability)",
         _uses_ddim),
    Rule("sample.num_batches_per_epoch", integer(1)),
    Rule("sample.nb_gen", integer(2), "(edits are ranked against each other)"),
    Rule("train.batch_size", integer(1)),
    Rule("train.use_8bit_adam", boolean),
    Rule("train.learning_rate", number(0, low_open=True)),
    Rule("train.adam_beta1", number(0, 1, high_open=True)),
    Rule("train.adam_beta2", number(0, 1, high_open=True)),
    Rule("train.adam_weight_decay", number(0)),
    Rule("train.adam_epsilon", number(0, low_open=True)),
    Rule("train.gradient_accumulation_steps", integer(1)),
    Rule("train.max_grad_norm", number(0, low_open=True)),
    Rule("train.num_inner_epochs", integer(1)),
    Rule("train.timestep_fraction", number(0, 1, low_open=True)),
    Rule("train.eps", number(0, 1, low_open=True, high_open=True)),
    Rule("train.beta", number(0, low_open=True)),
    Rule("train.skip_ratio_overflow", boolean),
    Rule("train.score_alpha", number()),
    Rule("train.rec_lambda", number(0)),
    Rule("reward.weights", score_weights),
    Rule("reward.rec_lambda", number(0)),
    Rule("reward.box_threshold", THRESHOLD),
    Rule("reward.text_threshold", THRESHOLD),
    Rule("reward.structural_align", one_of(ALIGNMENTS)),
    Rule("reward.semantic_backbone", one_of(SEMANTIC_BACKBONE_KEYS)),
    Rule("reward.batch_size", integer(1)),
    Rule("reward.dtype", one_of(DTYPES)),
    Rule("reward.overlap", boolean),
    Rule("reward.per_image_constants", boolean),
    Rule("reward.offload", boolean),
    Rule("reward.standardize", one_of(STANDARDIZE_MODES)),
    Rule("reward.ranking", one_of(RANKINGS)),
    Rule("reward.mask_fallback", one_of(MASK_FALLBACKS)),
    Rule("models.dreamsim_cache", text),
    Rule("val.inputimg_dir", text),
    Rule("val.fraction", number(0, 1, high_open=True)),
    Rule("val.seeds", integer(1)),
    Rule("val.every", integer(0), "(0: no validation)"),
    Rule("val.scores", score_list),
)


def validate_training_config(config) -> None:
    """Refuse a training config (config/base.py's keys) the method cannot run with, naming each
    key at fault. Batch divisibility and the number of trainable steps depend on the process count
    and the scheduler: the trainer's ``plan_batches`` checks them."""
    check_rules(config, TRAINING_RULES)
