"""Score a folder of edits with the metrics of SPEC §8, or compare a specialist with its base model.

    python scripts/evaluate.py [--config config/eval.py] [--config.key=value ...]
    python scripts/evaluate.py --config config/eval.py:demo   # tiny models, demo data
    python scripts/evaluate.py --config.base_vs_specialist=logs/<run>   # both models on the run's held-out inputs

Each evaluation writes new files (<input>_<style>.json, then <input>_<style>.2.json, ...), never
replacing an earlier one.
"""

from editspecialists.command_line import define_config_flag, run_script
from editspecialists.evaluation.compare import compare_with_base
from editspecialists.evaluation.evaluator import evaluate
from editspecialists.training.launch import prepare_demo_assets

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
