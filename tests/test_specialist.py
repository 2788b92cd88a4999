"""EditSpecialistPipeline and the export: a diffusers pipeline (components, save_pretrained /
from_pretrained, offload, progress bar, dtypes, the LoRA in diffusers' format), the same pixels as
generate.py, merged vs adapter, the base model, images of any size, exports of the first format, and
files at fault named."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from editspecialists import EditSpecialistPipeline, writing
from editspecialists.diffusion.bundle import EditModelSpec
from editspecialists.specialist.app import edit_pair, load_models
from editspecialists.generation import generate_edits, read_manifest
from editspecialists.formats.export import (CONV_IN, FIRST_FORMAT, FIRST_FORMAT_SPECIALIST, FIRST_FORMAT_STYLE_MODULE,
                                            LORA_WEIGHTS, METADATA, ExportError)
from editspecialists.specialist.base import working_size
from editspecialists.formats import checkpoint as ckpt
from editspecialists.training.trainer import Trainer
from tests.helpers import perturb_style_path, tiny_brightness_config

STEPS = 3
REPO = Path(__file__).resolve().parents[1]


def generation_config(tiny_ip2p_path, root, **overrides):
    config = tiny_brightness_config(tiny_ip2p_path, root / "data", root / "logs", **overrides)
    config.sample.sample_savedir = str(root / "edits")
    config.sample.batch_size = 1
    config.sample.num_steps = STEPS
    return config


@pytest.fixture(scope="module")
def trained_run(tiny_ip2p_path, tmp_path_factory):
    """A one-epoch run of the tiny brightness preset (LoRA moved away from zero) and its root."""
    root = tmp_path_factory.mktemp("specialist")
    config = tiny_brightness_config(tiny_ip2p_path, root / "data", root / "logs", num_epochs=1)
    config.train.learning_rate = 5e-2
    return Trainer(config).run(), root


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The run exported by scripts/export.py (the LoRA as an adapter in diffusers' format); nothing
    else in the run's root may be written."""
    run, root = trained_run
    before = sorted(p for p in root.rglob("*"))
    out = tmp_path_factory.mktemp("exports") / "car_lego"
    result = subprocess.run([sys.executable, "scripts/export.py", f"--config.load_checkpoint={run}", f"--out={out}"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p for p in root.rglob("*")) == before, "the export wrote outside --out"
    return out


def pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_export_gives_generate_pys_pixels_without_the_run(trained_run, exported, tiny_ip2p_path, monkeypatch):
    run, root = trained_run
    config = generation_config(tiny_ip2p_path, root, load_checkpoint=str(run))
    folder = generate_edits(config)
    entry = read_manifest(folder)["edit_car_02.png"]
    hidden = run.with_name("hidden")
    run.rename(hidden)  # the export must not need the run folder
    try:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        pipe = EditSpecialistPipeline.from_pretrained(exported, device="cpu")
        assert isinstance(pipe, DiffusionPipeline) and pipe.policy is None
        result = pipe(Image.open(root / "data" / "inputs" / entry["input"]),
                      Image.open(root / "data" / "styles" / entry["style"]), entry["prompt"],
                      num_inference_steps=STEPS, generator=entry["seed"])
    finally:
        hidden.rename(run)
    assert np.array_equal(pixels(result.images[0]), pixels(Image.open(folder / entry["edit"])))
    metadata = json.loads((exported / METADATA).read_text())
    assert metadata["input_name"] == "car" and metadata["base"]["model"] == str(tiny_ip2p_path)
    assert metadata["source"]["weights_sha256"] == ckpt.weights_sha256(ckpt.resolve_checkpoint(run))
    assert metadata["unet"] == "adapter" and pipe.info == {k: v for k, v in metadata.items() if k != "format"}
    model_index = json.loads((exported / "model_index.json").read_text())
    assert model_index["_class_name"] == "EditSpecialistPipeline"
    assert model_index["style_module"] == ["editspecialists.diffusion.policy", "StylePromptAttention"]
    card = (exported / "README.md").read_text()
    assert "turn the car into lego" in card and "EditSpecialistPipeline.from_pretrained" in card
    assert 'pipe.load_lora_weights("<this folder>")' in card
    assert pipe.default_prompt() == "turn the car into lego"


def test_a_merged_export_is_within_1e4_of_the_adapter_and_the_app_loads_its_base_model(trained_run, exported,
                                                                                       tmp_path):
    run, root = trained_run
    specialist = EditSpecialistPipeline.from_pretrained(run, device="cpu")
    merged = specialist.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert not (merged / LORA_WEIGHTS).exists() and json.loads((merged / METADATA).read_text())["unet"] == "merged"
    assert UNet2DConditionModel.load_config(merged / "unet")["in_channels"] == 12
    image = Image.open(root / "data" / "inputs" / "car_01.png")
    style = Image.open(root / "data" / "styles" / "lego_00.png")
    edits = {}
    for name, path in (("adapter", exported), ("merged", merged)):
        pipe = EditSpecialistPipeline.from_pretrained(path, device="cpu")
        edits[name] = pipe(image, style, num_inference_steps=STEPS, generator=7, output_type="pt").images
    difference = (edits["adapter"] - edits["merged"]).abs().max().item()
    assert 0 <= difference < 1e-4
    base = EditSpecialistPipeline.from_pretrained(specialist.info["base"]["model"], device="cpu")
    base_edit = base(image, style, "turn the car into lego", num_inference_steps=STEPS, generator=7,
                     output_type="pt").images
    assert (base_edit - edits["adapter"]).abs().max() > 2 / 255, "the trained LoRA changes the edit"
    with specialist.base_model():  # the app's base pane: the policy's frozen reference
        reference = specialist(image, style, num_inference_steps=STEPS, generator=7, output_type="pt")
    assert reference.prompt == "turn the car into lego" and reference.images.equal(base_edit)

    loaded, loaded_base = load_models(str(merged), device="cpu")  # an export holds no base model: loaded beside
    with pytest.raises(ValueError, match="this pipeline holds no base model"):
        with loaded.base_model():
            pass
    assert loaded.policy is None and loaded_base.policy is not None
    image_file = root / "data" / "inputs" / "car_01.png"
    style_file = root / "data" / "styles" / "lego_00.png"
    app_edit, app_base_edit = edit_pair(loaded, loaded_base, str(image_file), [str(style_file)], "", "", "", 7, STEPS)
    settings = {key: loaded.info["defaults"][key]
                for key in ("guidance_scale", "image_guidance_scale", "style_image_guidance_scale", "eta")}
    expected = base(image, style, "turn the car into lego", num_inference_steps=STEPS, generator=7, **settings)
    assert np.array_equal(pixels(app_base_edit), pixels(expected.images[0])) and app_edit.size == image.size


def test_a_base_model_id_edits_as_the_untrained_policy(tiny_ip2p_path, tmp_path, caplog):
    config = generation_config(tiny_ip2p_path, tmp_path)
    folder = generate_edits(config)
    entry = read_manifest(folder)["edit_car_05.png"]
    caplog.clear()
    pipe = EditSpecialistPipeline.from_pretrained(str(tiny_ip2p_path), device="cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{tiny_ip2p_path} is the base InstructPix2Pix model, untrained: its edits are the base "
                        f"model's (visual-prompt modules at their initial, identity state; no specialist loaded)"]
    edit = pipe(tmp_path / "data" / "inputs" / entry["input"], tmp_path / "data" / "styles" / entry["style"],
                entry["prompt"], num_inference_steps=STEPS, generator=entry["seed"], max_side=32).images[0]
    assert np.array_equal(pixels(edit), pixels(Image.open(folder / entry["edit"])))

    wide = Image.new("RGBA", (300, 200), (200, 30, 30, 128))
    edits = pipe(wide, Image.open(tmp_path / "data" / "styles" / entry["style"]), input_name="car", style_name="lego",
                 num_inference_steps=2, generator=1, max_side=64, num_images_per_prompt=2)
    assert edits.prompt == "turn the car into lego"
    assert [(e.size, e.mode) for e in edits.images] == [((300, 200), "RGB")] * 2
    assert not np.array_equal(pixels(edits.images[0]), pixels(edits.images[1]))
    with pytest.raises(ValueError, match="give a prompt, or input_name and style_name"):
        pipe(wide, wide, num_inference_steps=1)


def test_working_size_keeps_the_aspect_in_multiples_of_the_vae_factor_and_never_enlarges():
    assert working_size(300, 200, 512, 8) == (304, 200)  # 300 -> nearest multiple of 8
    assert working_size(300, 200, 64, 8) == (64, 40)  # scale 64/300: 200 -> 42.7 -> 40
    assert working_size(300, 200, 64, 2) == (64, 42)  # the tiny VAE's factor 2
    assert working_size(1000, 30, 256, 8) == (256, 8)  # at least 8
    assert working_size(32, 32, 32, 8) == (32, 32)


def test_images_are_processed_by_the_vae_image_processor_and_edited_back_to_their_size(tiny_ip2p_path,
                                                                                       monkeypatch):
    """A non-square image of odd sides is edited at the VAE factor's multiples (2 for the tiny VAE,
    whose config has 2 blocks; 8 for Stable Diffusion's), then resized back to its size."""
    pipe = EditSpecialistPipeline.from_base(str(tiny_ip2p_path), warn=False).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.image_processor, VaeImageProcessor) and pipe.vae_scale_factor == 2
    assert pipe.image_processor.config.vae_scale_factor == 2 and not pipe.image_processor.config.do_normalize
    shapes, edit_tensors = [], pipe.edit_tensors

    def spy(inputs, styles, *args, **kwargs):
        shapes.append((tuple(inputs.shape), tuple(styles.shape), inputs.is_contiguous()))
        return edit_tensors(inputs, styles, *args, **kwargs)

    monkeypatch.setattr(pipe, "edit_tensors", spy)
    odd = Image.new("RGB", (45, 31), (200, 30, 30))
    edit = pipe(odd, Image.new("RGB", (17, 60), (20, 30, 230)), "p", num_inference_steps=1, generator=0,
                max_side=32).images[0]
    assert shapes == [((1, 3, 22, 32), (1, 3, 22, 32), True)]  # 45 x 31 scaled by 32/45: 32 x 22.04 -> 32 x 22
    assert (edit.size, edit.mode) == ((45, 31), "RGB")


def test_damaged_exports_are_errors_naming_the_file(exported, tmp_path):
    def copy(name):
        return shutil.copytree(exported, tmp_path / name)

    missing = copy("missing")
    (missing / LORA_WEIGHTS).unlink()
    with pytest.raises(ExportError, match=f"{missing / LORA_WEIGHTS} is missing"):
        EditSpecialistPipeline.from_pretrained(missing, device="cpu")

    corrupt = copy("corrupt")
    vae = corrupt / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(vae.read_bytes())
    data[len(data) // 2] ^= 0xFF
    vae.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=f"{vae} has changed since it was saved"):
        EditSpecialistPipeline.from_pretrained(corrupt, device="cpu")

    other = copy("other_config")
    model_index = (other / "model_index.json").read_text()
    assert '"resolution": 32' in model_index
    (other / "model_index.json").write_text(model_index.replace('"resolution": 32', '"resolution": 64'))
    with pytest.raises(ExportError, match=re.escape(f"{other / 'model_index.json'} has changed since it was saved")):
        EditSpecialistPipeline.from_pretrained(other, device="cpu")

    metadata = json.loads((other / METADATA).read_text())
    del metadata["unet"]
    (other / METADATA).write_text(json.dumps(metadata))
    with pytest.raises(ExportError, match=f"{other / METADATA} lacks \\['unet'\\]"):
        EditSpecialistPipeline.from_pretrained(other, device="cpu")
    (other / METADATA).write_text(json.dumps({**metadata, "format": "editspecialists-export-9"}))
    with pytest.raises(ExportError, match="is not an export of this version .* export the specialist again"):
        EditSpecialistPipeline.from_pretrained(other, device="cpu")

    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'stranger'} is neither an exported specialist"):
        EditSpecialistPipeline.from_pretrained(tmp_path / "stranger", device="cpu")


def test_export_refuses_a_non_empty_folder(trained_run, tmp_path):
    run, _ = trained_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = subprocess.run([sys.executable, "scripts/export.py", f"--config.load_checkpoint={run}", f"--out={out}"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {out} is not empty")
    pipe = EditSpecialistPipeline.from_pretrained(run, device="cpu")
    with pytest.raises(ExportError, match=f"{out} is not empty"):
        pipe.save_pretrained(out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_the_compact_export_stores_only_what_training_changed_and_edits_as_the_full_one(trained_run, exported,
                                                                                       tiny_ip2p_path, tmp_path):
    """scripts/export.py --components=reference: style module, conv_in, LoRA and scheduler, the base
    components loaded from the base model's id: the same pixels as the full export, and the base model
    (the policy's frozen reference) at hand."""
    run, _ = trained_run
    out = tmp_path / "compact"
    result = subprocess.run([sys.executable, "scripts/export.py", f"--config.load_checkpoint={run}", f"--out={out}",
                             "--components=reference"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", METADATA, "hashes.json", "scheduler",
                                                            "style_module", LORA_WEIGHTS, CONV_IN])
    full_size, compact_size = (sum(p.stat().st_size for p in folder.rglob("*")) for folder in (exported, out))
    assert compact_size < full_size / 4
    assert "loaded from that id (not stored here)" in (out / "README.md").read_text()
    compact = loaded(out)
    assert edit(compact).equal(edit(loaded(exported)))
    with compact.base_model():
        assert edit(compact).equal(edit(EditSpecialistPipeline.from_base(str(tiny_ip2p_path), warn=False)))


def test_compact_exports_round_trip_and_name_the_file_that_does_not_fit(lora_pipeline, tmp_path):
    expected = edit(lora_pipeline)
    adapter = lora_pipeline.save_pretrained(tmp_path / "adapter", components="reference")
    assert edit(loaded(adapter)).equal(expected)
    merged = lora_pipeline.save_pretrained(tmp_path / "merged", components="reference", merge_lora=True)
    assert not (merged / CONV_IN).exists() and (merged / "unet").is_dir()
    full_merged = lora_pipeline.save_pretrained(tmp_path / "full_merged", merge_lora=True)
    assert edit(loaded(merged)).equal(edit(loaded(full_merged)))
    metadata = json.loads((adapter / METADATA).read_text())
    metadata["architecture"]["lora_rank"] = "8"  # the LoRA file holds rank 4
    (adapter / METADATA).write_text(json.dumps(metadata))
    with pytest.raises(ExportError, match=f"{adapter / LORA_WEIGHTS} does not hold the LoRA .*size mismatch"):
        loaded(adapter)
    with pytest.raises(ValueError, match=r"components must be one of \['copy', 'reference'\], got 'link'"):
        lora_pipeline.save_pretrained(tmp_path / "link", components="link")


# ------------------------------------------------------------------------------ a diffusers pipeline
PROMPT = "turn the car into lego"
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
STYLE = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8))


def edit(pipe) -> torch.Tensor:
    """The pipeline's edit (1, 3, 32, 32) of the test image for seed 7, as a float tensor."""
    return pipe(IMAGE, STYLE, PROMPT, num_inference_steps=STEPS, generator=7, output_type="pt").images


def loaded(path) -> EditSpecialistPipeline:
    pipe = EditSpecialistPipeline.from_pretrained(path, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def lora_pipeline(tiny_ip2p_path):
    """The visual-prompt model with LoRA of rank 4 and alpha 2 (the scale alpha / rank must travel with
    the LoRA) and every trained part moved from its initial value; not to be changed by tests."""
    pipe = EditSpecialistPipeline.untrained(EditModelSpec(str(tiny_ip2p_path), lora_rank=4, lora_alpha=2), warn=False)
    torch.manual_seed(0)
    perturb_style_path(pipe.policy)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_pipeline_has_diffusers_components_progress_bar_offload_and_dtypes(tiny_ip2p_path, capsys):
    pipe = EditSpecialistPipeline.from_base(str(tiny_ip2p_path), warn=False)
    assert isinstance(pipe, DiffusionPipeline)
    assert set(pipe.components) == {"vae", "text_encoder", "tokenizer", "unet", "style_module", "scheduler"}
    assert pipe.unet is pipe.policy.unet and pipe.style_module is pipe.policy.style_module
    assert set(pipe.model_cpu_offload_seq.split("->")) <= set(pipe.components)
    expected = edit(pipe)
    assert f"{STEPS}/{STEPS}" in capsys.readouterr().err, "a progress bar over the sampling steps"
    pipe.set_progress_bar_config(disable=True)
    edit(pipe)
    assert capsys.readouterr().err == ""

    # accelerate's offload hooks, here with the CPU as the execution device: an accelerator (what the
    # offload is for: components wait on the CPU, each moves to it when called) needs a GPU to test
    pipe.enable_model_cpu_offload(device="cpu")
    assert all(hasattr(pipe.components[name], "_hf_hook") for name in pipe.model_cpu_offload_seq.split("->"))
    assert edit(pipe).equal(expected)
    pipe.remove_all_hooks()

    for place in (("cpu", torch.float64), (torch.bfloat16,)):
        pipe.to(*place)
        modules = [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
        dtypes = {param.dtype for module in [*modules, pipe.policy] for param in module.parameters()}
        assert dtypes == {place[-1]}, "every component, and the policy's frozen reference"
        edits = edit(pipe)
        assert edits.isfinite().all() and (edits - expected).abs().max() < (1e-4 if place[-1] == torch.float64 else 0.2)
    pipe = EditSpecialistPipeline.from_pretrained(str(tiny_ip2p_path), torch_dtype=torch.float64, device="cpu")
    modules = [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
    assert {param.dtype for module in [*modules, pipe.policy] for param in module.parameters()} == {torch.float64}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_cpu_offload_on_a_gpu_edits_as_the_pipeline_placed_on_it(tiny_ip2p_path):
    """enable_model_cpu_offload: the specialist's edits and its base model's (the policy's frozen
    reference, moved to the GPU by base_model) as when the whole pipeline sits on the GPU."""
    def specialist():
        pipe = EditSpecialistPipeline.untrained(EditModelSpec(str(tiny_ip2p_path), lora_rank=4, lora_alpha=2),
                                                warn=False)
        torch.manual_seed(0)
        perturb_style_path(pipe.policy)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    placed = specialist().to("cuda")
    with placed.base_model():
        expected_base = edit(placed)
    offloaded = specialist()
    offloaded.enable_model_cpu_offload()
    torch.testing.assert_close(edit(offloaded), edit(placed), rtol=0, atol=1e-5)
    with offloaded.base_model():
        torch.testing.assert_close(edit(offloaded), expected_base, rtol=0, atol=1e-5)
    assert offloaded.unet.device.type == "cpu" and offloaded._execution_device.type == "cuda"


def test_save_pretrained_then_from_pretrained_gives_bit_identical_edits(lora_pipeline, tmp_path):
    """Adapter and merged exports, loaded by EditSpecialistPipeline.from_pretrained and by diffusers'
    own DiffusionPipeline.from_pretrained (with load_lora_weights for the adapter), and saved again."""
    expected = edit(lora_pipeline)
    adapter = lora_pipeline.save_pretrained(tmp_path / "adapter")
    assert edit(loaded(adapter)).equal(expected)
    in_diffusers = DiffusionPipeline.from_pretrained(str(adapter))
    assert type(in_diffusers) is EditSpecialistPipeline and in_diffusers.info == loaded(adapter).info
    in_diffusers.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=re.escape(f"lacks its LoRA (an adapter export): load it with "
                                                   f"pipe.load_lora_weights({str(adapter)!r})")):
        edit(in_diffusers)
    in_diffusers.load_lora_weights(str(adapter))
    assert edit(in_diffusers).equal(expected)
    assert edit(loaded(loaded(adapter).save_pretrained(tmp_path / "adapter_again"))).equal(expected)

    merged = lora_pipeline.save_pretrained(tmp_path / "merged", merge_lora=True)
    merged_edit = edit(loaded(merged))
    assert 0 < (merged_edit - expected).abs().max() < 1e-4, "the LoRA fused into the weights: float rounding"
    in_diffusers = DiffusionPipeline.from_pretrained(str(merged))
    in_diffusers.set_progress_bar_config(disable=True)
    assert edit(in_diffusers).equal(merged_edit)
    assert edit(loaded(loaded(merged).save_pretrained(tmp_path / "merged_again"))).equal(merged_edit)


def test_the_exported_adapter_loads_onto_the_unet_in_diffusers_as_our_merged_weights(lora_pipeline, tmp_path):
    """The adapter export's unet/ and pytorch_lora_weights.safetensors, read by the diffusers call the
    README documents, compute what the merged export's UNet and the pipeline's own UNet compute."""
    adapter = lora_pipeline.save_pretrained(tmp_path / "adapter")
    merged = lora_pipeline.save_pretrained(tmp_path / "merged", merge_lora=True)
    with safe_open(str(adapter / LORA_WEIGHTS), framework="pt") as handle:
        assert all(key.startswith("unet.") and ".lora_" in key for key in handle.keys())
    unet = UNet2DConditionModel.from_pretrained(adapter, subfolder="unet")
    without_lora = UNet2DConditionModel.from_pretrained(adapter, subfolder="unet")
    unet.load_lora_adapter(str(adapter), weight_name="pytorch_lora_weights.safetensors", prefix="unet")
    (config,) = unet.peft_config.values()
    assert (config.r, config.lora_alpha) == (4, 2)
    fused = UNet2DConditionModel.from_pretrained(merged, subfolder="unet")
    generator = torch.Generator().manual_seed(0)
    sample, states = torch.randn(2, 12, 16, 16, generator=generator), torch.randn(2, 8, 32, generator=generator)
    with torch.no_grad():
        out = {name: model(sample, torch.tensor([10, 500]), encoder_hidden_states=states).sample for name, model in
               (("adapter", unet), ("merged", fused), ("ours", lora_pipeline.unet), ("without", without_lora))}
    assert torch.allclose(out["adapter"], out["merged"], rtol=0, atol=1e-5)
    assert out["adapter"].equal(out["ours"])
    assert (out["adapter"] - out["without"]).abs().max() > 1e-3, "the LoRA changes the UNet's output"


def first_format_export(folder: Path, export: Path, checkpoint: Path | None) -> Path:
    """The first format's export (formats/export.py) of the specialist of ``export`` (this format),
    its base model referenced: the checkpoint as ``specialist/`` (``checkpoint`` given: an adapter
    export), else the merged ``unet/`` and ``style_module.safetensors`` of a merged ``export``."""
    metadata = json.loads((export / METADATA).read_text())
    shutil.copytree(export / "scheduler", folder / "scheduler")
    if checkpoint is not None:
        shutil.copytree(checkpoint, folder / FIRST_FORMAT_SPECIALIST)
    else:
        shutil.copytree(export / "unet", folder / "unet")
        with safe_open(str(export / "style_module" / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
            save_file({key: handle.get_tensor(key) for key in handle.keys()}, str(folder / FIRST_FORMAT_STYLE_MODULE))
    (folder / "README.md").write_text((export / "README.md").read_text())
    ckpt.record_hashes(folder)
    (folder / METADATA).write_text(json.dumps({**metadata, "format": FIRST_FORMAT, "components": "reference"}))
    return folder


def test_exports_of_the_first_format_still_load_to_the_same_edits(trained_run, exported, tmp_path):
    run, _ = trained_run
    merged = EditSpecialistPipeline.from_pretrained(run, device="cpu").save_pretrained(tmp_path / "merged",
                                                                                     merge_lora=True)
    for export, checkpoint in ((exported, ckpt.resolve_checkpoint(run)), (merged, None)):
        first = first_format_export(tmp_path / f"first_{export.name}", export, checkpoint)
        assert edit(loaded(first)).equal(edit(loaded(export))), export.name


# ------------------------------------------------------------------------------ exports under faults
def incomplete_copies(exported: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Copies of the export each missing what makes it complete, with the mark named in the error."""
    without_metadata = shutil.copytree(exported, tmp_path / "without_metadata")
    (without_metadata / METADATA).unlink()
    card_only = tmp_path / "card_and_components"
    shutil.copytree(exported, card_only,
                    ignore=shutil.ignore_patterns(METADATA, "hashes.json", "style_module", LORA_WEIGHTS, "unet"))
    return {"metadata": (without_metadata, "hashes.json, style_module, pytorch_lora_weights.safetensors, README.md "
                                           "(its model card), unet/ with 12 input channels"),
            "card": (card_only, "README.md (its model card)")}


def test_an_incomplete_export_is_refused_by_from_pretrained_generate_and_the_app(exported, trained_run,
                                                                                 tiny_ip2p_path, tmp_path):
    """Without editspecialist.json a copied or half-written export would load as the base model,
    whose edits are not the specialist's: it is refused, naming the folder and what it lacks."""
    _, root = trained_run
    for folder, marks in incomplete_copies(exported, tmp_path).values():
        message = f"{folder} is an incomplete export: it has {marks} but no {METADATA} "
        with pytest.raises(ExportError, match=re.escape(message)):
            EditSpecialistPipeline.from_pretrained(folder, device="cpu")
        with pytest.raises(ExportError, match=re.escape(message)):
            load_models(str(folder), device="cpu")
        with pytest.raises(ExportError, match=re.escape(message)):
            generate_edits(generation_config(tiny_ip2p_path, root, load_checkpoint=str(folder)))
    merged_unet_only = tmp_path / "merged_unet_only"
    unet = EditSpecialistPipeline.from_pretrained(trained_run[0], device="cpu").unet
    unet.save_pretrained(merged_unet_only / "unet")
    (merged_unet_only / "model_index.json").write_text((exported / "model_index.json").read_text())
    with pytest.raises(ExportError, match=re.escape("it has unet/ with 12 input channels but no")):
        EditSpecialistPipeline.from_pretrained(merged_unet_only, device="cpu")


NO_SPACE = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_an_export_on_a_full_disk_writes_nothing_and_keeps_the_earlier_one(trained_run, exported, tmp_path,
                                                                           monkeypatch):
    """safetensors fails as on a full disk at the export's third weights file: one message names the
    folder, the space needed and free; no temporary folder is left and the earlier export in that
    folder (being overwritten) is untouched."""
    import safetensors.torch

    out = shutil.copytree(exported, tmp_path / "car_lego")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []
    original = safetensors.torch.serialize_file

    def serialize_file(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise SafetensorError(NO_SPACE)
        return original(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)
    specialist = EditSpecialistPipeline.from_pretrained(trained_run[0], device="cpu")
    with pytest.raises(writing.WriteFailedError) as raised:
        specialist.save_pretrained(out, overwrite=True)
    message = str(raised.value)
    assert message.startswith(f"could not write export {out}: no space left on its disk. It needs about ")
    assert f"MB free on its disk. Nothing was written to {out}. Free some space, then run again: " in message
    assert all(Path(path).is_relative_to(out.with_name("car_lego.tmp")) for path in calls), "written aside"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["car_lego"], "no temporary folder left"
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    EditSpecialistPipeline.from_pretrained(out, device="cpu")


@pytest.mark.slow
def test_an_export_killed_midway_leaves_a_refused_folder_and_the_same_command_completes_it(trained_run, tmp_path):
    """scripts/export.py is killed (SIGKILL) while writing its third weights file: --out does not
    exist, its temporary folder is refused by from_pretrained, and the same command, run again,
    writes a complete export."""
    run, _ = trained_run
    out = tmp_path / "car_lego"
    command = [sys.executable, "scripts/export.py", f"--config.load_checkpoint={run}", f"--out={out}"]
    killed = subprocess.run([sys.executable, "tests/signal_worker.py", "SIGKILL@serialize:3", *command[1:]],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = out.with_name("car_lego.tmp")
    assert not out.exists() and partial.is_dir()
    with pytest.raises(ExportError, match=re.escape(f"{partial} is an incomplete export: it has README.md (its "
                                                    f"model card), unet/ with 12 input channels but no {METADATA}")):
        EditSpecialistPipeline.from_pretrained(partial, device="cpu")
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["car_lego"]
    EditSpecialistPipeline.from_pretrained(out, device="cpu")
