"""Score a folder of edits with the metrics of docs/method.md §8, or compare a specialist with its base model.

    python scripts/evaluate.py [--config config/eval.py] [--config.key=value ...]
    python scripts/evaluate.py --config config/eval.py:demo   # tiny models, demo data
    python scripts/evaluate.py --config.base_vs_specialist=logs/<run>   # both models on the run's held-out inputs

The outputs (<input>_<style>.json, _per_image.csv, _report.png) are written together at the end,
the JSON last; a rerun with the same settings replaces them, an evaluation with other settings
writes <input>_<style>.2.json, ... beside them. SIGTERM or Ctrl-C stops between batches, writing
nothing.
"""

from editspecialists.command_line import define_config_flag, run_script
from editspecialists.evaluation.compare import compare_with_base
from editspecialists.evaluation.evaluator import evaluate
from editspecialists.demo.assets import prepare_demo_assets

_CONFIG = define_config_flag("config/eval.py", "Evaluation configuration file.")


def main(_):
    config = _CONFIG.value
    prepare_demo_assets(config, policy=False, evaluation=True)
    if config.base_vs_specialist:
        compare_with_base(config)
    else:
        evaluate(config)


if __name__ == "__main__":
    run_script(main, __doc__)
