"""EditSpecialistPipeline and the export: the same pixels as generate.py, merged vs adapter, the base
model, images of any size, and files at fault named."""

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
from PIL import Image

from safetensors import SafetensorError

from editspecialists import EditSpecialistPipeline, writing
from editspecialists.specialist.app import load_models
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


# ------------------------------------------------------------------------------ exports under faults
def incomplete_copies(exported: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Copies of the export each missing what makes it complete, with the mark named in the error."""
    without_metadata = shutil.copytree(exported, tmp_path / "without_metadata")
    (without_metadata / METADATA).unlink()
    card_only = tmp_path / "card_and_components"
    shutil.copytree(exported, card_only, ignore=shutil.ignore_patterns(METADATA, "hashes.json", SPECIALIST))
    return {"metadata": (without_metadata, "hashes.json, specialist, README.md (its model card)"),
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
    unet = EditSpecialistPipeline.from_pretrained(trained_run[0], device="cpu").denoiser.unet
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
                                                    f"model card) but no {METADATA}")):
        EditSpecialistPipeline.from_pretrained(partial, device="cpu")
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["car_lego"]
    EditSpecialistPipeline.from_pretrained(out, device="cpu")
