"""Score a folder of edits with the metrics of SPEC §8.

    python scripts/evaluate.py [--config config/eval.py] [--config.key=value ...]
    python scripts/evaluate.py --config config/eval.py:demo   # tiny models, demo data
"""

from absl import app
from ml_collections import config_flags

from editspecialists.evaluation.evaluator import evaluate
from editspecialists.training.launch import setup_logging

_CONFIG = config_flags.DEFINE_config_file("config", "config/eval.py", "Evaluation configuration file.")


def main(_):
    config = _CONFIG.value
    setup_logging()
    if config.demo_root:
        from editspecialists.testing.tiny_eval import build_demo_eval_assets

        build_demo_eval_assets(config.demo_root)
    evaluate(config)


if __name__ == "__main__":
    app.run(main)
