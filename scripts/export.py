"""Export a trained specialist as a self-contained folder that loads with
``EditSpecialistPipeline.from_pretrained(folder)``, offline, without the run folder.

    python scripts/export.py --config.load_checkpoint=logs/<run> --out=exported/car_lego [--merge_lora]

--config.load_checkpoint takes a checkpoint folder, its weights file or a run folder (its newest
checkpoint that verifies). --components=reference stores the base model's id and revision instead
of copying its components. --out must be empty or new (--overwrite replaces its contents). The
export is written as <out>.tmp and renamed to --out when complete: an export that fails or is
killed leaves --out as it was.
"""

from absl import flags

from editspecialists.command_line import define_config_flag, run_script

FLAGS = flags.FLAGS
define_config_flag("config/base.py", "Configuration file (its load_checkpoint is exported).")
flags.DEFINE_string("out", None, "Folder to write the export to (empty or new).", required=True)
flags.DEFINE_bool("merge_lora", False, "Merge LoRA into the UNet weights (else keep it as an adapter).")
flags.DEFINE_enum("components", "copy", ["copy", "reference"],
                  "Copy the base pipeline's components, or reference its model id and revision.")
flags.DEFINE_bool("overwrite", False, "Replace the contents of a non-empty --out.")


def main(_):
    from editspecialists.specialist.pipeline import export_checkpoint

    folder = export_checkpoint(FLAGS.config.load_checkpoint, FLAGS.out, merge_lora=FLAGS.merge_lora,
                               components=FLAGS.components, overwrite=FLAGS.overwrite)
    print(f"exported to {folder}")


if __name__ == "__main__":
    run_script(main, __doc__)
