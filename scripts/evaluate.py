"""Score a folder of edits with the metrics of SPEC §8.

    python scripts/evaluate.py [--config config/eval.py] [--config.key=value ...]
    python scripts/evaluate.py --config config/eval.py:demo   # tiny models, demo data
"""

import logging

from absl import app
from ml_collections import config_flags

from editspecialists.evaluation.evaluator import evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "config/eval.py", "Evaluation configuration.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    evaluate(_CONFIG.value)


if __name__ == "__main__":
    app.run(main)
