"""Fine-tune InstructPix2Pix into an editing specialist.

    accelerate launch scripts/train.py --config config/base.py --config.input_name=car
"""

from absl import flags

from editspecialists.command_line import define_config_flag, run_script
from editspecialists.demo.assets import prepare_demo_assets
from editspecialists.launch import process_state
from editspecialists.training.run_folder import describe_run_folder
from editspecialists.training.trainer import Trainer

FLAGS = flags.FLAGS
define_config_flag("config/base.py", "Training configuration file.")


def main(_):
    prepare_demo_assets(FLAGS.config)
    run_dir = Trainer(FLAGS.config).run()
    if process_state().is_main_process:
        print(describe_run_folder(run_dir))


if __name__ == "__main__":
    run_script(main, __doc__)
