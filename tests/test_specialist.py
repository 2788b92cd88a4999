"""EditSpecialistPipeline and the export: the same pixels as generate.py, merged vs adapter, the base
model, images of any size, and files at fault named."""

import json
import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editspecialists import EditSpecialistPipeline
from editspecialists.generation import generate_edits, read_manifest
from editspecialists.specialist.folder import METADATA, SPECIALIST, ExportError
from editspecialists.specialist.pipeline import working_size
from editspecialists.training import checkpoint as ckpt
from editspecialists.training.trainer import Trainer
from tests.helpers import tiny_brightness_config

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
    """The run exported by scripts/export.py (adapter, components copied), and the files of the
    run's root before the export (nothing else may be written)."""
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
        result = pipe(Image.open(root / "data" / "inputs" / entry["input"]),
                      Image.open(root / "data" / "styles" / entry["style"]), entry["prompt"],
                      num_inference_steps=STEPS, generator=entry["seed"])
    finally:
        hidden.rename(run)
    assert np.array_equal(pixels(result.images[0]), pixels(Image.open(folder / entry["edit"])))
    metadata = json.loads((exported / METADATA).read_text())
    assert metadata["input_name"] == "car" and metadata["base"]["model"] == str(tiny_ip2p_path)
    assert metadata["source"]["weights_sha256"] == ckpt.weights_sha256(ckpt.resolve_checkpoint(run))
    card = (exported / "README.md").read_text()
    assert "turn the car into lego" in card and "EditSpecialistPipeline.from_pretrained" in card
    assert pipe.default_prompt() == "turn the car into lego"


def test_merged_export_with_a_referenced_base_is_within_1e4_of_the_adapter(trained_run, exported, tmp_path):
    run, root = trained_run
    specialist = EditSpecialistPipeline.from_pretrained(run, device="cpu")
    merged = specialist.save_pretrained(tmp_path / "merged", merge_lora=True, components="reference")
    assert not (merged / "vae").exists() and (merged / "unet").is_dir()
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


def test_a_base_model_id_edits_as_the_untrained_policy(tiny_ip2p_path, tmp_path, capsys):
    config = generation_config(tiny_ip2p_path, tmp_path)
    folder = generate_edits(config)
    entry = read_manifest(folder)["edit_car_05.png"]
    capsys.readouterr()
    pipe = EditSpecialistPipeline.from_pretrained(str(tiny_ip2p_path), device="cpu")
    assert "base InstructPix2Pix model, untrained" in capsys.readouterr().out
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


def test_working_size_keeps_the_aspect_in_multiples_of_8_and_never_enlarges():
    assert working_size(300, 200, 512) == (304, 200)  # 300 -> nearest multiple of 8
    assert working_size(300, 200, 64) == (64, 40)  # scale 64/300: 200 -> 42.7 -> 40
    assert working_size(1000, 30, 256) == (256, 8)  # at least 8
    assert working_size(32, 32, 32) == (32, 32)


def test_damaged_exports_are_errors_naming_the_file(exported, tmp_path):
    def copy(name):
        return shutil.copytree(exported, tmp_path / name)

    missing = copy("missing")
    (missing / SPECIALIST / ckpt.WEIGHTS).unlink()
    with pytest.raises(ExportError, match=f"{missing / SPECIALIST / ckpt.WEIGHTS} is missing"):
        EditSpecialistPipeline.from_pretrained(missing, device="cpu")

    corrupt = copy("corrupt")
    vae = corrupt / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(vae.read_bytes())
    data[len(data) // 2] ^= 0xFF
    vae.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=f"{vae} has changed since it was saved"):
        EditSpecialistPipeline.from_pretrained(corrupt, device="cpu")

    other = copy("other_architecture")
    metadata = json.loads((other / METADATA).read_text())
    metadata["architecture"]["lora_rank"] = "4"
    (other / METADATA).write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=f"{other / SPECIALIST / ckpt.WEIGHTS} was saved with another architecture"):
        EditSpecialistPipeline.from_pretrained(other, device="cpu")

    del metadata["unet"]
    (other / METADATA).write_text(json.dumps(metadata))
    with pytest.raises(ExportError, match=f"{other / METADATA} lacks \\['unet'\\]"):
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
