"""The keys of an evaluation config (config/eval.py), checked before anything loads (see
:mod:`editspecialists.config_checks` for the kinds of check)."""

from __future__ import annotations

import torch

from editspecialists.config_checks import SEED, THRESHOLD, Rule, boolean, check_rules, integer, name, one_of, text
from editspecialists.data.images import RESIZE_FILTERS
from editspecialists.evaluation.families import PATCH_SLICINGS, parse_metrics
from editspecialists.precision import DTYPES
from editspecialists.rewards.depth import ALIGNMENTS


def metric_selection(value):
    try:
        parse_metrics(value)
    except (ValueError, AttributeError, TypeError) as error:
        return f"must be 'all' or a comma-separated list of metric names ({error})"
    return None


def torch_device(value):
    if value == "auto":
        return None
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return "must be 'auto' or a torch device ('cpu', 'cuda', 'cuda:1', ...)"
    return None


EVALUATION_RULES = (
    Rule("inputimg_dir", text),
    Rule("styleimg_dir", text),
    Rule("sample_savedir", text),
    Rule("eval_savedir", text),
    Rule("input_name", name),
    Rule("style_name", name),
    Rule("whole_frame", boolean),
    Rule("structural_align", one_of(ALIGNMENTS)),
    Rule("data_resize", integer(0), "(0: the edits' own size)"),
    Rule("resize_filter", one_of(RESIZE_FILTERS)),
    Rule("patch_slicing", one_of(PATCH_SLICINGS)),
    Rule("metrics", metric_selection),
    Rule("batch_size", integer(1)),
    Rule("seed", SEED),
    Rule("device", torch_device),
    Rule("dtype", one_of(DTYPES)),
    Rule("hps_autocast", boolean),
    Rule("box_threshold", THRESHOLD),
    Rule("text_threshold", THRESHOLD),
    Rule("report_rows", integer(1)),
    Rule("base_vs_specialist", text),
    Rule("compare_inputimg_dir", text),
    Rule("compare_seeds", integer(0), "(0: the run's val.seeds)"),
    Rule("demo_root", text),
    Rule("models.dreamsim_cache", text),
)


def validate_evaluation_config(config) -> None:
    """Refuse an evaluation config (config/eval.py's keys) naming each key at fault."""
    check_rules(config, EVALUATION_RULES)
