"""Evaluation configuration for ``scripts/evaluate.py`` (docs/method.md §7–§9).

Presets: ``--config config/eval.py`` (real models, hub ids), ``--config config/eval.py:demo``
(tiny local models and the demo images, no download) or ``config/eval.py:demo_wide`` (the same,
comparing base and specialist on the wide set of 96 held-out demo cars). Override any key on the
command line, e.g. ``--config.metrics=hps_score,pick_score``.
"""

import importlib.util
from pathlib import Path

import ml_collections


def _base_module():
    """``config/base.py`` imported by path (config files are loaded by path, not as a package)."""
    spec = importlib.util.spec_from_file_location("editspecialists_config_base", Path(__file__).with_name("base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(preset=""):
    config = ml_collections.ConfigDict()

    # ---- folders ----
    config.inputimg_dir = "data/inputs"
    config.styleimg_dir = "data/styles"
    # Edits are read from <sample_savedir>/<input_name>_<style_name>/ (scripts/generate.py's output).
    config.sample_savedir = "generated_samples"
    # <input>_<style>.json, _per_image.csv, _report.png, written together (JSON last); a rerun with the
    # same settings replaces them, other settings write <input>_<style>.2.json, ...
    config.eval_savedir = "evaluation_results"

    # ---- what was edited ----
    config.input_name = "car"
    config.style_name = "lego"
    # All-ones masks: the *_gen_input metrics then compare the whole image and l2_out becomes the
    # whole-image MSE (there is no "outside" to preserve), which semantic_score then includes.
    config.whole_frame = False
    # "none" compares raw relative depths (faithful); "scale_shift" least-squares aligns the edit's first.
    config.structural_align = "none"
    # Edits, inputs and styles resized (short side) and centre-cropped to this before every metric,
    # as the original (256); 0 scores the edits at their own size (inputs and styles fitted to it).
    config.data_resize = 256
    # Filter of that resize: "bilinear" (torchvision's Resize, the original's) or "bicubic".
    config.resize_filter = "bilinear"
    # "intended": the *_gen_sty / *_gen_input definitions; "research_code": the numbers the
    # original's evaluation printed (its CLIP branch compared input with style for clipSim_gen_input
    # and input with edit for clipSim_gen_sty; its DINOv2 branch input with style for dinoSim_gen_sty),
    # to set beside the paper's table (README "Generate and evaluate").
    config.patch_slicing = "intended"

    # ---- metrics ----
    # "all", or a comma-separated string of (README "Generate and evaluate" defines each):
    #   paper's definitions: semantic_score, structural_score, l2_out, clip_txt, clip_dir,
    #     clipSim_gen_sty, clipSim_gen_input, dinoSim_gen_sty, dinoSim_gen_input,
    #     dreamsimSim_gen_sty, dreamsimSim_gen_input, hps_score, imgrew_score, pick_score;
    #   our variants: semantic_score_norec, clip_dir_normalized, clipSim_gen_input_aligned,
    #     dinoSim_gen_input_aligned, dreamsimSim_gen_input_aligned.
    config.metrics = "all"
    config.batch_size = 8  # edits per model call
    config.seed = 42  # style image choice when the edits folder has no manifest.jsonl
    config.device = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    config.dtype = "fp32"  # "fp32", "fp16" or "bf16" for every evaluation model
    config.hps_autocast = True  # HPSv2 under fp16 autocast on CUDA, as the original (no effect on CPU)
    config.box_threshold = 0.4  # Grounding DINO box score threshold
    config.text_threshold = 0.3  # Grounding DINO text score threshold
    config.report_rows = 16  # edits shown in the side-by-side PNG report
    # A checkpoint or run folder: generate with it and with its base model on the run's held-out
    # inputs (same prompts, styles, seeds) and compare the two, metric by metric (README); empty:
    # score the edits of sample_savedir.
    config.base_vs_specialist = ""
    # With base_vs_specialist: a folder of other images to compare on instead of the run's held-out
    # inputs (never the folder it trained on), each edited compare_seeds times (0: the run's val.seeds).
    config.compare_inputimg_dir = ""
    config.compare_seeds = 0

    # ---- model ids (hub ids or local folders; the same table as training) ----
    config.models = _base_module().models_config()

    config.demo_root = ""  # set by the demo preset: scripts/evaluate.py builds the demo assets there

    if preset in ("demo", "demo_wide"):
        use_demo_assets(config)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} of config/eval.py (known: demo, demo_wide)")
    if preset == "demo_wide":
        # base_vs_specialist on the 96 held-out cars of the wide set, twice each, rather than the
        # validation's 8 (README, "Does the full method learn on the demo?").
        from editspecialists.demo.assets import demo_paths

        config.compare_inputimg_dir = demo_paths(config.demo_root)["held_out_wide"]
        config.compare_seeds = 2
    return config


def use_demo_assets(config, root=None):
    """Point folders at the demo images and every model at a tiny local one under ``root``
    (default: the cache of editspecialists.demo.cache).

    Nothing is built here: scripts/evaluate.py builds what is missing on first use.
    """
    from editspecialists.demo.images import INPUT_NAME, STYLE_NAME
    from editspecialists.demo.assets import demo_models_config, demo_paths
    from editspecialists.demo.cache import default_cache_root

    root = str(root or default_cache_root())
    config.demo_root = root
    paths = demo_paths(root)
    config.inputimg_dir, config.styleimg_dir = paths["inputs"], paths["styles"]
    config.input_name, config.style_name = INPUT_NAME, STYLE_NAME
    # `python scripts/generate.py --config config/demo.py` writes its edits to outputs/demo_edits/car_lego.
    config.sample_savedir = "outputs/demo_edits"
    config.eval_savedir = "outputs/demo_eval"
    config.batch_size = 4
    config.data_resize = 32  # the demo's training resolution (config/demo.py)
    config.models.update(demo_models_config(root))
