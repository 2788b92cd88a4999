"""A FLUX.1 Kontext specialist outside training (issue 30): generate.py, the exports (full, merged,
compact), ``EditSpecialistPipeline.from_pretrained`` giving ``KontextSpecialistPipeline``, diffusers'
own loader, the base model and the app, on the tiny Kontext stand-in: the same pixels everywhere."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FluxKontextPipeline, FluxTransformer2DModel
from PIL import Image

from editspecialists import EditSpecialistPipeline
from editspecialists.evaluation.compare import compare_with_base
from editspecialists.formats import checkpoint as ckpt
from editspecialists.formats.export import LORA_WEIGHTS, METADATA, X_EMBEDDER, ExportError, export_marks
from editspecialists.generation import generate_edits, read_manifest
from editspecialists.specialist.app import base_label, edit_pair, load_models
from editspecialists.specialist.base import spec_of
from editspecialists.specialist.kontext_pipeline import KontextSpecialistPipeline
from editspecialists.training.trainer import Trainer
from tests.helpers import as_tiny_kontext, load_config, tiny_brightness_config

REPO = Path(__file__).resolve().parents[1]
STEPS, WINDOW, GUIDANCE = 3, "0:2", 2.5


def kontext_config(tiny_kontext_path, root: Path, **overrides):
    """The brightness preset on the tiny Kontext stand-in: flow SDE with a window, 64 T5 tokens."""
    config = as_tiny_kontext(tiny_brightness_config(tiny_kontext_path, root / "data", root / "logs", **overrides))
    config.sample.num_steps, config.sample.sde_window = STEPS, WINDOW
    config.sample.sample_savedir, config.sample.batch_size, config.sample.edit_format = str(root / "edits"), 1, "png"
    return config


@pytest.fixture(scope="module")
def kontext_run(tiny_kontext_path, tmp_path_factory):
    """A one-epoch Kontext run (LoRA, x_embedder and style module moved from their start) and its root."""
    root = tmp_path_factory.mktemp("kontext_specialist")
    config = kontext_config(tiny_kontext_path, root, num_epochs=1)
    config.train.learning_rate = 5e-2
    return Trainer(config).run(), root


@pytest.fixture(scope="module")
def kontext_export(kontext_run, tmp_path_factory):
    """The run exported by scripts/export.py (adapter form, every component copied)."""
    run, _ = kontext_run
    out = tmp_path_factory.mktemp("kontext_exports") / "car_lego"
    result = subprocess.run([sys.executable, "scripts/export.py", f"--config.load_checkpoint={run}", f"--out={out}"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def edit(pipe, root: Path, entry: dict, **settings):
    """``pipe``'s edit of a manifest entry's input, style, prompt and seed (the run's sampling)."""
    settings = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "eta": 0.7, "sde_window": WINDOW,
                **settings}
    return pipe(Image.open(root / "data" / "inputs" / entry["input"]), Image.open(root / "data" / "styles" /
                                                                                 entry["style"]),
                entry["prompt"], generator=entry["seed"], output_type="pt", **settings).images


def test_generate_py_the_checkpoint_and_every_export_of_a_kontext_run_give_the_same_edits(
        kontext_run, kontext_export, tiny_kontext_path, tmp_path):
    run, root = kontext_run
    folder = generate_edits(kontext_config(tiny_kontext_path, root, load_checkpoint=str(run)))
    entry = read_manifest(folder)["edit_car_02.png"]
    generated = torch.from_numpy(pixels(Image.open(folder / entry["edit"]))).permute(2, 0, 1)[None].float() / 255

    from_run = EditSpecialistPipeline.from_pretrained(run, device="cpu")
    assert type(from_run) is KontextSpecialistPipeline and from_run.policy is not None
    expected = edit(from_run, root, entry)
    assert torch.equal((expected * 255).round(), generated * 255), "the pipeline edits as generate.py"
    assert from_run.info["family"] == "flux_kontext" and from_run.info["max_sequence_length"] == 64
    assert from_run.info["defaults"]["sde_window"] == WINDOW

    metadata = json.loads((kontext_export / METADATA).read_text())
    assert metadata["family"] == "flux_kontext" and metadata["unet"] == "adapter"
    assert json.loads((kontext_export / "model_index.json").read_text())["_class_name"] == "KontextSpecialistPipeline"
    assert FluxTransformer2DModel.load_config(kontext_export / "transformer")["in_channels"] == 128
    card = (kontext_export / "README.md").read_text()
    assert "An editing specialist of FLUX.1 Kontext" in card and "onto pipe.transformer" in card
    exported = EditSpecialistPipeline.from_pretrained(kontext_export, device="cpu")
    assert type(exported) is KontextSpecialistPipeline and exported.policy is None
    assert edit(exported, root, entry).equal(expected)

    in_diffusers = DiffusionPipeline.from_pretrained(str(kontext_export))
    assert type(in_diffusers) is KontextSpecialistPipeline
    with pytest.raises(ValueError, match="transformer lacks its LoRA"):
        edit(in_diffusers, root, entry)
    in_diffusers.load_lora_weights(str(kontext_export))
    assert edit(in_diffusers, root, entry).equal(expected)

    compact = from_run.save_pretrained(tmp_path / "compact", components="reference")
    assert (compact / X_EMBEDDER).is_file() and (compact / LORA_WEIGHTS).is_file()
    assert not (compact / "transformer").exists() and not (compact / "text_encoder_2").exists()
    reloaded = EditSpecialistPipeline.from_pretrained(compact, device="cpu")
    assert reloaded.policy is not None and edit(reloaded, root, entry).equal(expected)

    merged = from_run.save_pretrained(tmp_path / "merged", merge_lora=True, components="reference")
    merged_edit = edit(EditSpecialistPipeline.from_pretrained(merged, device="cpu"), root, entry)
    assert (merged_edit - expected).abs().max() < 1e-4, "the LoRA fused into the weights: float rounding"


def test_the_base_kontext_model_edits_as_flux_kontext_pipeline_and_is_the_specialists_reference(
        kontext_run, tiny_kontext_path, caplog):
    """A FluxKontextPipeline folder loads as the untrained specialist (its family read from
    model_index.json), whose deterministic edit (eta 0) is the pipeline's own; the trained
    specialist's frozen reference edits as that base model at the specialist's prompt length (64
    T5 tokens, the base pipeline's 512: the padding tokens change the edit); the trained one differs."""
    run, root = kontext_run
    image, style = Image.open(root / "data" / "inputs" / "car_01.png"), Image.open(root / "data" / "styles" /
                                                                                  "lego_00.png")
    prompt = "turn the car into lego"
    base = EditSpecialistPipeline.from_pretrained(tiny_kontext_path, device="cpu")
    assert type(base) is KontextSpecialistPipeline
    assert any("is the base FLUX.1 Kontext model, untrained" in record.getMessage() for record in caplog.records)
    ours = base(image, style, prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=3,
                output_type="pt").images
    theirs = FluxKontextPipeline.from_pretrained(tiny_kontext_path)
    theirs.set_progress_bar_config(disable=True)
    reference = theirs(image=image, prompt=prompt, guidance_scale=GUIDANCE, num_inference_steps=STEPS, height=32,
                       width=32, max_area=32 * 32, _auto_resize=False, output_type="pt",
                       generator=torch.Generator().manual_seed(3)).images
    assert (ours - reference).abs().max() < 1e-4

    specialist = EditSpecialistPipeline.from_pretrained(run, device="cpu")
    settings = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "generator": 3, "output_type": "pt"}
    at_64_tokens = EditSpecialistPipeline.untrained(spec_of(specialist.info), warn=False)
    base_edit = at_64_tokens(image, style, prompt, **settings).images
    assert (base_edit - ours).abs().max() > 1e-4, "the prompt length matters"
    with specialist.base_model():
        assert specialist(image, style, prompt, **settings).images.equal(base_edit)
    assert (specialist(image, style, prompt, **settings).images - base_edit).abs().max() > 2 / 255


def test_the_app_shows_a_kontext_export_beside_its_base_model(kontext_run, kontext_export):
    run, root = kontext_run
    specialist, base = load_models(str(kontext_export), device="cpu")
    assert type(base) is KontextSpecialistPipeline and base.policy is not None
    assert base_label(specialist.info) == "base FLUX.1 Kontext"
    image_file, style_file = root / "data" / "inputs" / "car_01.png", root / "data" / "styles" / "lego_00.png"
    edited, base_edit = edit_pair(specialist, base, str(image_file), [str(style_file)], "", "", "", 5, STEPS)
    defaults = {key: specialist.info["defaults"][key] for key in ("guidance_scale", "eta", "sde_window")}
    expected = base(Image.open(image_file), Image.open(style_file), "turn the car into lego", generator=5,
                    num_inference_steps=STEPS, **defaults).images[0]
    assert np.array_equal(pixels(base_edit), pixels(expected)) and edited.size == (32, 32)


def test_an_incomplete_kontext_export_is_refused_with_what_marks_it(kontext_export, tmp_path):
    partial = tmp_path / "partial"
    (partial / "transformer").mkdir(parents=True)
    (partial / "transformer" / "config.json").write_text((kontext_export / "transformer" / "config.json").read_text())
    (partial / "model_index.json").write_text((kontext_export / "model_index.json").read_text())
    assert export_marks(partial) == ["transformer/ with 128 input channels"]
    with pytest.raises(ExportError, match="is an incomplete export: it has transformer/ with 128 input channels"):
        EditSpecialistPipeline.from_pretrained(partial, device="cpu")
    with pytest.raises(ValueError, match="a specialist of the instruct_pix2pix family: load it with EditSpecialistPipeline"):
        KontextSpecialistPipeline.pipeline_for("instruct_pix2pix")


@pytest.mark.slow
def test_evaluate_compares_a_kontext_specialist_with_its_base_model(kontext_run, demo_assets_root, tmp_path):
    """evaluate.py --config.base_vs_specialist on the Kontext run: both models edit its held-out
    inputs through generate.py's code and are scored with the evaluation's metrics."""
    run, _ = kontext_run
    config = load_config("eval", "demo")
    config.demo_root, config.eval_savedir = "", str(tmp_path / "eval")
    config.metrics = "semantic_score,structural_score,l2_out"
    config.base_vs_specialist = str(run)
    payload = compare_with_base(config)
    trained = ckpt.saved_run_config(ckpt.resolve_checkpoint(run))
    assert payload["edits_compared"] == len(payload["held_out"]["inputs"]) * trained.val.seeds > 0
    assert set(payload["metrics"]) == {"semantic_score", "structural_score", "l2_out"}
    assert payload["metrics"]["l2_out"]["delta"] != 0, "the trained specialist edits otherwise than its base"
    base_edits = tmp_path / "eval" / "car_lego_base_vs_specialist" / "base" / "car_lego"
    assert read_manifest(base_edits)  # the base model's held-out edits, made by generate.py's code
