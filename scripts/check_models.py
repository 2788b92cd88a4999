"""Load every configured model by its id or folder and run one image through it, before a long run.

    python scripts/check_models.py --config config/base.py      # after download_repos.sh
    HF_HUB_OFFLINE=1 python scripts/check_models.py --config config/base.py
    python scripts/check_models.py --config config/demo.py      # the tiny demo models

Prints a table (role, id, class loaded, dtype, device, seconds, peak memory, OK or the error with
what to do) and the estimated GPU memory of a training run; exits with status 1 if any model fails.
"""

import sys

from absl import flags

from editspecialists.model_check import check_models, report
from editspecialists.command_line import define_config_flag, run_script
from editspecialists.demo.assets import prepare_demo_assets

FLAGS = flags.FLAGS
define_config_flag("config/base.py", "Training or evaluation configuration file.")
flags.DEFINE_string("device", "auto", "auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...")


def main(_):
    from editspecialists.evaluation.evaluator import resolve_device

    config = FLAGS.config
    prepare_demo_assets(config, policy="pretrained" in config, evaluation=True)
    device = resolve_device(FLAGS.device)
    results = check_models(config, device, lambda result: print(
        f"checked {result.check.name}: {'OK' if result.ok else 'FAILED'} ({result.seconds:.1f} s)", flush=True))
    print()
    print(report(config, results, device))
    failed = [result.check.name for result in results if not result.ok]
    if failed:
        print(f"\n{len(failed)} of {len(results)} model checks failed: {', '.join(failed)}")
        sys.exit(1)
    print(f"\nall {len(results)} model checks passed")


if __name__ == "__main__":
    run_script(main, __doc__)
