"""The scripts' command line: config errors end with one ``error: ...`` line, and the config's keys
are listed as dotted keys."""

import ml_collections
import pytest

from editspecialists.config_keys import flat_items
from tests.test_demo_runs import launch


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
