"""The editing app: the specialist's edit beside its base model's, in the browser.

    python scripts/app.py --model exported/car_lego      # or a run / checkpoint folder
    python scripts/app.py --model demo                   # the demo: newest demo run, else the demo editor

Needs the app extra: pip install -e '.[app]'.
"""

from absl import flags

from editspecialists.command_line import run_script

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "demo", "Exported folder, checkpoint, run folder, base model id, or 'demo'.")
flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (0.0.0.0 for other machines).")
flags.DEFINE_integer("port", 7860, "Port to serve on.")
flags.DEFINE_bool("share", False, "Also serve through a public Gradio link.")


def main(_):
    from editspecialists.specialist.app import build_app, demo_examples, load_models

    specialist, base = load_models(FLAGS.model)
    examples = demo_examples() if FLAGS.model == "demo" else None
    build_app(specialist, base, examples).launch(server_name=FLAGS.host, server_port=FLAGS.port, share=FLAGS.share)


if __name__ == "__main__":
    run_script(main, __doc__, config_flag=None)
