"""Edit every image of the input folder with a trained specialist (or the base model).

    python scripts/generate.py --config config/base.py --config.load_checkpoint=logs/<run>

Safe to stop and rerun: done edits (listed in the output folder's manifest.jsonl, with the model
that made them) are kept, the others redone. Edits of another model are replaced only with
--config.overwrite=True.
"""

from absl import flags

from editspecialists.generation import generate_edits
from editspecialists.command_line import define_config_flag, run_script
from editspecialists.demo.assets import prepare_demo_assets

FLAGS = flags.FLAGS
define_config_flag("config/base.py", "Generation configuration file.")


def main(_):
    prepare_demo_assets(FLAGS.config)
    print(f"edits written to {generate_edits(FLAGS.config)}")


if __name__ == "__main__":
    run_script(main, __doc__)
