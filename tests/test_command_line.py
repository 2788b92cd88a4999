"""The scripts' command line: config errors end with one ``error: ...`` line, and the config's keys
are listed as dotted keys."""

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import ml_collections
import pytest

import editspecialists
from editspecialists.config_keys import flat_items
from editspecialists.launch import CHATTY_LOGGERS, setup_logging
from tests.helpers import launch


@pytest.mark.parametrize("command, message", [
    ("python scripts/train.py --config.num_step=3",
     "error: --config.num_step: no key 'num_step' in config/base.py (did you mean 'num_epochs'?)"),
    ("python scripts/evaluate.py --config.pretrained.model=x",
     "error: --config.pretrained.model: no key 'pretrained' in config/eval.py"),
    ("python scripts/train.py --config=config/none.py",
     "error: --config config/none.py: [Errno 2] No such file or directory: 'config/none.py'"),
])
def test_config_error_without_or_with_config_flag_ends_with_one_line(scripts_dir, command, message):
    """An override of the default config file fails as the script defines the flag, before the
    command line is parsed; a missing config file fails when the config is first read."""
    result = launch(command, scripts_dir, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [message]


@pytest.mark.parametrize("body, message", [
    ("def get_config():\n    return 1 / 0\n", "line 2: ZeroDivisionError: division by zero"),
    ("import ml_collections\n\ndef get_config(:\n    pass\n", "line 3: SyntaxError: invalid syntax"),
])
def test_a_config_file_that_raises_is_one_line_naming_the_file_and_line(scripts_dir, body, message):
    broken = scripts_dir / "broken.py"
    broken.write_text(body)
    result = launch("python scripts/evaluate.py --config=broken.py", scripts_dir, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [f"error: --config broken.py: {message}"]


def test_flat_items_lists_dotted_keys_with_whole_dicts_kept_whole():
    config = ml_collections.ConfigDict({"b": 1, "a": {"y": "s", "x": {"deep": 2.0}}, "weights": {"p": 1, "q": 2}})
    assert flat_items(config) == [("a.x.deep", 2.0), ("a.y", "s"), ("b", 1), ("weights.p", 1), ("weights.q", 2)]
    assert flat_items(config, whole_dicts=("weights", "a.x")) == [
        ("a.x", {"deep": 2.0}), ("a.y", "s"), ("b", 1), ("weights", {"p": 1, "q": 2})]


@pytest.fixture
def logging_state():
    """Restores the logging set-up, the library loggers' levels and the progress-bar switches."""
    import diffusers
    import transformers

    root = logging.getLogger()
    showwarning = warnings.showwarning
    names = ("editspecialists", *CHATTY_LOGGERS)
    saved = (root.handlers[:], root.level, {name: logging.getLogger(name).level for name in names},
             transformers.utils.logging.is_progress_bar_enabled(), diffusers.utils.logging.is_progress_bar_enabled())
    yield
    root.handlers[:], level, levels, transformers_bars, diffusers_bars = saved
    root.setLevel(level)
    for name, name_level in levels.items():
        logging.getLogger(name).setLevel(name_level)
    logging.captureWarnings(False)
    warnings.showwarning = showwarning
    for library, enabled in ((transformers, transformers_bars), (diffusers, diffusers_bars)):
        (library.utils.logging.enable_progress_bar if enabled else library.utils.logging.disable_progress_bar)()


def test_console_is_quiet_by_default_and_verbose_brings_the_rest_back(logging_state, capsys):
    import diffusers
    import huggingface_hub
    import transformers

    def log_lines() -> list[str]:
        logging.getLogger("editspecialists.training").info("epoch 0 done")
        logging.getLogger("accelerate.checkpointing").info("Optimizer state saved")
        logging.info("Loaded ViT-H-14 model config.")  # open_clip logs on the root logger
        logging.getLogger("accelerate").warning("something to act on")
        return capsys.readouterr().err.splitlines()

    setup_logging(verbose=False)
    assert log_lines() == ["epoch 0 done", "warning: something to act on"]
    ours = str(Path(editspecialists.__file__).parent / "training" / "x.py")
    for lineno in (12, 80):  # pytest records warnings.warn; the console's hook is called as Python would
        warnings.showwarning(FutureWarning("`x` is deprecated;\n use y"), FutureWarning, ours, lineno)
        warnings.showwarning(UserWarning("odd config"), UserWarning, "/lib/site/x.py", lineno)
    # a library's notice about its own code (open_clip 2.26 importing timm.models.layers): --verbose only
    warnings.showwarning(FutureWarning("Importing from timm.models.layers is deprecated"), FutureWarning,
                         "/lib/site/timm/models/layers/__init__.py", 49)
    assert capsys.readouterr().err.splitlines() == ["warning: `x` is deprecated; use y (FutureWarning from x.py:12)",
                                                    "warning: odd config (UserWarning from x.py:12)"]
    assert not transformers.utils.logging.is_progress_bar_enabled()
    assert not diffusers.utils.logging.is_progress_bar_enabled()
    assert not huggingface_hub.utils.are_progress_bars_disabled(), "downloads keep their bars"
    setup_logging(verbose=True)
    lines = log_lines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "INFO editspecialists.training: epoch 0 done", "INFO accelerate.checkpointing: Optimizer state saved",
        "INFO root: Loaded ViT-H-14 model config.", "WARNING accelerate: something to act on"], lines
    assert transformers.utils.logging.is_progress_bar_enabled() and diffusers.utils.logging.is_progress_bar_enabled()


def caught(action) -> BaseException:
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the error is what is tested
        return error
    raise AssertionError("nothing raised")


def test_input_errors_are_ours_or_a_named_file_and_a_packages_own_error_is_not(tmp_path):
    from PIL import Image

    from editspecialists.command_line import PACKAGE_DIR, is_input_error
    from editspecialists.model_ids import validate_model_ids
    from editspecialists.precision import dtype_named

    assert is_input_error(caught(lambda: dtype_named("fp8", "reward.dtype")))  # a raise of ours
    assert is_input_error(caught(lambda: validate_model_ids({"models.depth": str(tmp_path / "none")})))
    assert is_input_error(caught(lambda: Image.open(tmp_path / "none.png")))  # raised in PIL, naming the file
    assert not is_input_error(caught(lambda: json.loads("{")))  # raised in the json module
    in_package = compile("int('x')", str(PACKAGE_DIR / "precision.py"), "exec")
    assert not is_input_error(caught(lambda: exec(in_package))), "our code calling into C is not a raise of ours"

    def reset():
        raise OSError("connection reset")

    assert not is_input_error(caught(reset))  # raised outside this package, naming no file


@pytest.mark.parametrize("body, ends", [
    ("json.loads('{')", "json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: "
                        "line 1 column 2 (char 1)"),
    ("dtype_named('fp8', 'reward.dtype')", "error: reward.dtype must be one of ['bf16', 'fp16', 'fp32'], got 'fp8'"),
])
def test_a_packages_value_error_keeps_its_traceback_and_ours_is_one_line(tmp_path, body, ends):
    script = tmp_path / "script.py"
    script.write_text("import json\n\nfrom editspecialists.command_line import run_script\n"
                      "from editspecialists.precision import dtype_named\n\n\n"
                      f"def main(argv):\n    {body}\n\n\nrun_script(main, 'usage', config_flag=None)\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == ends, result.stderr[-3000:]
    assert ("Traceback" in result.stderr) == ends.startswith("json."), result.stderr[-3000:]


def test_an_error_of_a_launch_of_several_processes_says_the_launchers_report_follows(tmp_path):
    """Printed at once by the failing process itself, our line then the note."""
    code = "from editspecialists.command_line import exit_with_message\nexit_with_message('no such folder x', 1)\n"
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: no such folder x", "(rank 0 of 2: the launcher's report of this failed process follows)"]
