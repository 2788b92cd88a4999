"""Draw a run's held-out curves (each score's paired difference from the base model per validation).

    python scripts/plot_validation.py logs/demo/<run> [--scores=semantic,structural]
    python scripts/plot_validation.py logs/demo/<run> --control=logs/demo/<control run>

Writes <run>/validation/curves.png from <run>/validation.jsonl; with --control, the paired
difference from the control run's edits instead (<run>/validation/curves_vs_<control>.png), over
the validations both runs made. Prints each score's last difference and its verdict.
"""

from absl import flags

from editspecialists.command_line import run_script
from editspecialists.training.curves import difference_lines, plot_validation

flags.DEFINE_list("scores", [], "Scores to draw (default: every score of validation.jsonl).")
flags.DEFINE_string("control", "", "A control run's folder (--config.reward.ranking=random, same command "
                    "otherwise): draw the run's difference from it instead of from the base model.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2:
        raise ValueError("give one run folder: python scripts/plot_validation.py logs/<run>")
    path, curves = plot_validation(argv[1], FLAGS.scores or None, FLAGS.control or None)
    print(f"wrote {path}")
    print("\n".join(difference_lines(curves, "the control" if FLAGS.control else "the base model")))


if __name__ == "__main__":
    run_script(main, __doc__, config_flag=None)
