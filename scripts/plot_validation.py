"""Draw a run's held-out curves (each score's paired difference from the base model per validation).

    python scripts/plot_validation.py logs/demo/<run> [--scores=semantic,structural]

Writes <run>/validation/curves.png from <run>/validation.jsonl.
"""

from absl import flags

from editspecialists.command_line import run_script
from editspecialists.training.curves import plot_validation

flags.DEFINE_list("scores", [], "Scores to draw (default: every score of validation.jsonl).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2:
        raise ValueError("give one run folder: python scripts/plot_validation.py logs/<run>")
    print(f"wrote {plot_validation(argv[1], FLAGS.scores or None)}")


if __name__ == "__main__":
    run_script(main, __doc__, config_flag=None)
