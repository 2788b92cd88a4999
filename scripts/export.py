"""Export a trained specialist as a folder that loads with
``EditSpecialistPipeline.from_pretrained(folder)``, offline, without the run folder: by default a
self-contained diffusers pipeline folder (``DiffusionPipeline.from_pretrained`` reads it too).

    python scripts/export.py --config.load_checkpoint=logs/<run> --out=exported/car_lego [--merge_lora]

--config.load_checkpoint takes a checkpoint folder, its weights file or a run folder (its newest
checkpoint that verifies). --merge_lora fuses the LoRA into the UNet; by default it is written in
diffusers' LoRA format beside the UNet. --components=reference writes the compact export: only what
training changed (megabytes with LoRA), the base components loaded from the base model's id and
revision when the export is loaded. --out must be empty or new (--overwrite replaces its contents).
The export is written as <out>.tmp and renamed to --out when complete: an export that fails or is
killed leaves --out as it was.
"""

from absl import flags

from editspecialists.command_line import define_config_flag, run_script

FLAGS = flags.FLAGS
define_config_flag("config/base.py", "Configuration file (its load_checkpoint is exported).")
flags.DEFINE_string("out", None, "Folder to write the export to (empty or new).", required=True)
flags.DEFINE_bool("merge_lora", False, "Fuse LoRA into the UNet weights (else keep it in diffusers' LoRA format).")
flags.DEFINE_enum("components", "copy", ["copy", "reference"],
                  "'copy': a diffusers pipeline folder holding every component; 'reference': only what training "
                  "changed (style module, conv_in and LoRA, or the merged UNet), the base components loaded from "
                  "the base model's id and revision.")
flags.DEFINE_bool("overwrite", False, "Replace the contents of a non-empty --out.")


def main(_):
    from editspecialists.specialist.pipeline import export_checkpoint

    folder = export_checkpoint(FLAGS.config.load_checkpoint, FLAGS.out, merge_lora=FLAGS.merge_lora,
                               components=FLAGS.components, overwrite=FLAGS.overwrite)
    print(f"exported to {folder}")


if __name__ == "__main__":
    run_script(main, __doc__)
