"""Benchmark sampling, training and feedback throughput, efficiency and memory (BENCHMARKS.md).

    python scripts/benchmark.py --model=tiny --out=bench.json
    python scripts/benchmark.py --model=sd15 --dtype=bf16 --out=bench_sd15.json   # on a GPU
    python scripts/benchmark.py --backbones --out=bench_backbones.json   # FLUX Kontext vs IP2P, tiny

Prints a table and writes the JSON report (see editspecialists.benchmarks).
"""

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from absl import app, flags

from editspecialists.benchmarks.backbones import compare_backbones, format_backbones_table
from editspecialists.benchmarks.feedback import realsize_feedback_config, tiny_feedback_config
from editspecialists.benchmarks.report import (format_feedback_table, format_table, run_benchmark,
                                               run_feedback_benchmark)
from editspecialists.benchmarks.settings import BenchSettings
from editspecialists.benchmarks.sizes import SIZES
from editspecialists.command_line import define_config_flag

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "tiny", sorted(SIZES), "Model size: tiny (CI), small (CPU), sd15 (GPU).")
flags.DEFINE_string("out", "bench.json", "Where to write the JSON report (empty: do not write).")
flags.DEFINE_integer("steps", None, "Denoising steps (default: the model size's).")
flags.DEFINE_integer("batch", None, "Inputs per sampling batch (default: the model size's).")
flags.DEFINE_integer("nb_gen", None, "Edits per input (default: the model size's).")
flags.DEFINE_integer("train_batch", 1, "Inputs per training micro-step.")
flags.DEFINE_integer("accumulation", 8, "Micro-steps per optimizer step in the training measurement.")
flags.DEFINE_integer("resolution", None, "Image side in pixels (default: the model size's).")
flags.DEFINE_enum("dtype", "fp32", ["fp32", "bf16", "fp16"],
                  "Autocast dtype, also the dtype of the frozen weights.")
flags.DEFINE_bool("channels_last", False, "UNet and VAE weights in channels-last memory format.")
flags.DEFINE_integer("threads", 1, "torch CPU threads.")
flags.DEFINE_integer("repeats", None, "Timed repeats, medians reported (default: the model size's).")
flags.DEFINE_integer("warmup", 1, "Untimed warm-up repeats.")
flags.DEFINE_string("device", "", "cuda or cpu (default: cuda when available).")
flags.DEFINE_string("cache", "", "Cache folder for the built models (default: editspecialists' cache).")
flags.DEFINE_enum("feedback", "tiny", ["tiny", "realsize", "config", "none"],
                  "Feedback models: tiny random ones (plumbing only), real-size ones with random weights "
                  "(built once, 3.3 GB), the ids of --config, or none.")
flags.DEFINE_bool("backbones", False, "Compare the FLUX.1 Kontext path with the InstructPix2Pix path on their "
                  "tiny stand-ins at the same workload (--resolution a multiple of 16; default 32).")
flags.DEFINE_bool("only_feedback", False, "Measure the feedback models alone, on random edits (no sampling, "
                  "no training): for real-size feedback models on a CPU.")
define_config_flag(str(Path(__file__).resolve().parents[1] / "config" / "base.py"),
                   "Configuration naming the feedback models and reward settings.")


def main(_):
    settings = BenchSettings(
        model=FLAGS.model, steps=FLAGS.steps, batch=FLAGS.batch, nb_gen=FLAGS.nb_gen,
        train_batch=FLAGS.train_batch, accumulation=FLAGS.accumulation, resolution=FLAGS.resolution,
        dtype=FLAGS.dtype, channels_last=FLAGS.channels_last, threads=FLAGS.threads,
        repeats=FLAGS.repeats, warmup=FLAGS.warmup, device=FLAGS.device, cache=FLAGS.cache,
        feedback=FLAGS.feedback != "none",
    )

    def feedback_config():
        cache = Path(FLAGS.cache) if FLAGS.cache else None
        if FLAGS.feedback == "tiny":
            return tiny_feedback_config(FLAGS.config, cache)
        if FLAGS.feedback == "realsize":
            return realsize_feedback_config(FLAGS.config, cache)
        return FLAGS.config

    command = " ".join(shlex.quote(arg) for arg in ["python", *sys.argv])
    if FLAGS.backbones:
        report = compare_backbones(replace(settings, resolution=settings.resolution or 32))
        print(format_backbones_table(report))
    elif FLAGS.only_feedback:
        report = run_feedback_benchmark(settings, feedback_config, command=command)
        print(format_feedback_table(report))
    else:
        report = run_benchmark(settings, feedback_config, command=command)
        print(format_table(report))
    if FLAGS.out:
        Path(FLAGS.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
