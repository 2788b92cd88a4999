"""Fine-tune InstructPix2Pix into an editing specialist.

    accelerate launch scripts/train.py --config config/base.py --config.input_name=car
"""

from absl import flags

from editspecialists.command_line import define_config_flag, run_script
from editspecialists.training.launch import prepare_demo_assets, setup_logging
from editspecialists.training.trainer import Trainer

FLAGS = flags.FLAGS
define_config_flag("config/base.py", "Training configuration file.")


def main(_):
    setup_logging()
    prepare_demo_assets(FLAGS.config)
    Trainer(FLAGS.config).run()


if __name__ == "__main__":
    run_script(main, __doc__)
