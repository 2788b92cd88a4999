"""Helpers shared by tests (no test module imports another): loading config files by path, small
training configs, launching scripts, hand-made image files, shared score tensors."""

import importlib.util
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_config(name: str, preset: str | None = None):
    """``get_config`` of ``config/<name>.py`` (with ``preset`` when given)."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "config" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if preset is None else module.get_config(preset)


def demo_scenes(count: int, height: int, width: int, seed: int = 0):
    """(scenes, walls): ``count`` demo car scenes and brick walls (editspecialists.demo.images)
    resized to ``height × width``, each ``(count, 3, height, width)`` in [0, 1]: images the
    trained feedback stand-ins mean something on (random noise looks like neither to them)."""
    import torch

    from editspecialists.demo.scenes import demo_training_images, image_tensor

    cars, walls = demo_training_images(num_cars=count, num_walls=count, seed=seed)
    resized = lambda images: torch.stack([image_tensor(image.resize((width, height))) for image in images])
    return resized(cars), resized(walls)


def tiny_brightness_settings(tiny_ip2p_path, data_dir: Path, logdir: Path, **overrides) -> dict:
    """{dotted config key: value} that make the demo brightness preset a run of seconds per epoch on
    the tiny random pipeline and given demo images (written here), ``overrides`` applied."""
    from editspecialists.demo.images import write_demo_images

    inputs, styles = write_demo_images(data_dir, size=32)
    return {"demo_root": "", "pretrained.model": str(tiny_ip2p_path), "inputimg_dir": str(inputs),
            "styleimg_dir": str(styles), "logdir": str(logdir), "run_name": "run", "num_epochs": 2,
            "sample.num_steps": 4, "sample.batch_size": 2, "sample.num_batches_per_epoch": 2,
            "train.batch_size": 1, "train.gradient_accumulation_steps": 2, "train.timestep_fraction": 0.5,
            "val.every": 0,  # no held-out validation unless a test asks (tests/test_validation_runs.py)
            **overrides}


def tiny_brightness_config(tiny_ip2p_path, data_dir: Path, logdir: Path, **overrides):
    """The demo brightness preset on the tiny random pipeline and given demo images: seconds per epoch."""
    config = load_config("demo", "brightness")
    for key, value in tiny_brightness_settings(tiny_ip2p_path, data_dir, logdir, **overrides).items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def as_tiny_kontext(config):
    """``config`` (a :func:`tiny_brightness_config` of the tiny Kontext stand-in) made a Kontext run:
    the flow SDE at noise level 0.7, guidance 2.5, prompts of 64 T5 tokens."""
    config.pretrained.family, config.pretrained.scheduler = "flux_kontext", "flow_sde"
    config.pretrained.max_sequence_length = 64
    config.sample.eta, config.sample.guidance_scale = 0.7, 2.5
    return config


def tiny_brightness_args(tiny_ip2p_path, data_dir: Path, logdir: Path, **overrides) -> list[str]:
    """The command-line arguments of scripts/train.py (or generate.py) for
    :func:`tiny_brightness_config` with the same arguments."""
    settings = tiny_brightness_settings(tiny_ip2p_path, data_dir, logdir, **overrides)
    return [f"--config={REPO / 'config' / 'demo.py'}:brightness", *(f"--config.{k}={v}" for k, v in settings.items())]


def perturb_style_path(policy, scale=0.1):
    """Give the style path a real effect (the initial policy ignores it): non-zero conv_in style
    channels, perturbed cross-attention module weights, non-zero LoRA B matrices."""
    import torch

    with torch.no_grad():
        policy.unet.conv_in.weight[:, 8:].normal_(0, scale)
        for param in policy.style_module.parameters():
            param.add_(scale * torch.randn_like(param))
        for name, param in policy.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)


# ---- running scripts
def run_process_group(command: list[str], timeout: int, merge_stderr: bool = False,
                      **popen) -> subprocess.CompletedProcess:
    """``subprocess.run(command)`` with stdout and stderr captured as text, carriage returns kept
    (stderr into stdout with ``merge_stderr``), in a process group of its own. Past ``timeout``
    seconds the whole group gets SIGABRT, so that every Python process of it (a launcher and its
    workers) prints its threads' stacks (``PYTHONFAULTHANDLER``), then SIGKILL, and the test fails
    with the end of that output: a timed-out launcher's workers would otherwise outlive the test,
    holding their port and cores."""
    env = dict(popen.pop("env", os.environ), PYTHONFAULTHANDLER="1")
    stderr = subprocess.STDOUT if merge_stderr else subprocess.PIPE
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True,
                          **popen) as process:
        try:
            outputs, timed_out = process.communicate(timeout=timeout), False
        except subprocess.TimeoutExpired:
            outputs, timed_out = stop_with_stacks(process), True
    stdout, stderr = (without_module_lists(text.decode(errors="replace")) if text else "" for text in outputs)
    if timed_out:
        pytest.fail(f"{shlex.join(command)} ran past {timeout} s; the end of its output, stacks included:\n"
                    f"{stdout[-6000:]}\n{stderr[-12000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def without_module_lists(text: str) -> str:
    """``text`` with each "Extension modules: ..." line that Python's fault handler prints after the
    stacks of a fatal error (thousands of characters) cut short: a test's failure message keeps the
    error and the stacks within its tail."""
    return re.sub(r"^Extension modules: [^\n]*\(total: (\d+)\)$", r"Extension modules: (\1, list left out)", text,
                  flags=re.M)


def stop_with_stacks(process: subprocess.Popen) -> tuple[bytes, bytes]:
    """SIGABRT to ``process``'s group (a Python process with a fault handler prints its stacks), then
    SIGKILL to what is left after 10 s; the group's (stdout, stderr)."""
    os.killpg(process.pid, signal.SIGABRT)
    try:
        return process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()


def free_port() -> int:
    """A TCP port that nothing listens on now, for the rendezvous of one launch: with a fixed port,
    workers can meet a stranger's store (a launch left behind, another job on the machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_cpu_processes() -> list[str]:
    """``accelerate launch`` (this interpreter's) of two processes, full precision, on a free port."""
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


def launch(command: str, cwd: Path, timeout: int = 900, console: bool = False) -> subprocess.CompletedProcess:
    """Run a shell-style command line (``VAR=value`` prefixes allowed) with this interpreter's
    scripts first on PATH and the session's build cache, through :func:`run_process_group`.
    ``console``: stderr merged into stdout, unbuffered and with its carriage returns, as a terminal
    receives them."""
    from editspecialists.demo.cache import CACHE_ENV, default_cache_root

    words = shlex.split(command)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env[CACHE_ENV] = str(default_cache_root())
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if not console:
        return run_process_group(words, timeout, cwd=cwd, env=env)
    return run_process_group(words, timeout, merge_stderr=True, cwd=cwd, env=dict(env, PYTHONUNBUFFERED="1"))


def cpu_worker_env() -> dict[str, str]:
    """This process's environment for a test worker script: on the CPU, one thread, the repository importable."""
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def launch_two_processes(args, tmp_path, timeout: int = 300):
    """:func:`two_cpu_processes` running ``args``, in ``tmp_path``; fails the test on error or past
    ``timeout`` seconds, returns stdout + stderr."""
    result = run_process_group([*two_cpu_processes(), *args], timeout, cwd=tmp_path, env=cpu_worker_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]
    return result.stdout + result.stderr


# ---- generation under faults
EDITS = [f"edit_car_{i:02d}.png" for i in range(8)]


def fault_config(tiny_ip2p_path, tmp_path: Path, **overrides):
    """:func:`tiny_brightness_config` generating 8 edits in batches of 3, 2 steps each, into ``tmp_path / "edits"``."""
    config = tiny_brightness_config(tiny_ip2p_path, tmp_path / "data", tmp_path / "logs", **overrides)
    config.sample.sample_savedir = str(tmp_path / "edits")
    config.sample.batch_size = 3
    config.sample.num_steps = 2
    return config


def assert_complete(folder: Path, edits=EDITS) -> None:
    """Every edit listed in the manifest (with its model), decoding, and no temporary file left."""
    from editspecialists.data.images import read_rgb
    from editspecialists.data.manifest import read_manifest

    manifest = read_manifest(folder)
    assert sorted(manifest) == edits and all(entry["model"] for entry in manifest.values())
    for name in edits:
        assert read_rgb(folder / name).size == (32, 32), name
    assert sorted(p.name for p in folder.iterdir()) == sorted(edits + ["manifest.jsonl"])


# ---- image files as the wild makes them
def oversized_png(path: Path, width: int, height: int) -> Path:
    """A real, valid black 1-bit PNG of ``width`` x ``height``, streamed row by row: a few kB on disk
    and little memory to write."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path) -> Path:
    """A 64x64 noise JPEG cut in the middle of its data."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


# ---- feedback and ranking
def feedback_run_config(tiny_ip2p_path, demo_root, work: Path, **overrides):
    """The tiny brightness run scored by the default reward (structural + semantic, Grounded-SAM2
    masks) on the tiny feedback stand-ins: 8 inputs and 5 styles, 4 inputs an epoch."""
    config = tiny_brightness_config(tiny_ip2p_path, work / "data", work / "logs", **overrides)
    from editspecialists.demo.assets import demo_models_config

    config.models.update(demo_models_config(demo_root))
    config.reward.weights = {"structural": 1.0, "semantic": 1.0}
    config.input_name, config.style_name = "car", "lego"
    return config


# Two sampling batches of 2 inputs x 2 edits; score "a" spreads 100 times wider in the second.
TWO_BATCHES = {
    "a": torch.tensor([[0.0, 4.0], [2.0, 2.0], [0.0, 400.0], [200.0, 200.0]]),
    "b": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
}
