"""What the scripts share: command-line parsing with plain error messages and a ``--help`` that
lists the config keys, logging, the process state, demo assets."""

from __future__ import annotations

import ast
import difflib
import io
import logging
import os
import subprocess
import sys
import time
import tokenize
from pathlib import Path
from typing import Callable

PACKAGE_DIR = Path(__file__).resolve().parents[1]
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "PIL", "accelerate"):  # accelerate: INFO lines at every checkpoint
        logging.getLogger(noisy).setLevel(logging.WARNING)


def process_state():
    """accelerate's process state, honouring ACCELERATE_USE_CPU like ``Accelerator`` does.

    (A bare ``PartialState()`` created before the ``Accelerator`` ignores that variable and
    would turn a multi-process CPU launch into independent single processes.)
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def prepare_demo_assets(config, *, policy: bool = True, evaluation: bool = False) -> None:
    """Build the demo's images and tiny models when the config asks for them (demo presets);
    see :func:`editspecialists.demo.assets.ensure_demo_assets` for the flags."""
    if config.get("demo_root"):
        from editspecialists.demo.assets import ensure_demo_assets

        state = process_state()
        silence_random_weight_warnings(explain=state.is_main_process)
        with state.main_process_first():
            ensure_demo_assets(config.demo_root, policy=policy, evaluation=evaluation)


def silence_random_weight_warnings(explain: bool) -> None:
    """Drop open_clip's "No pretrained weights loaded ... initialized randomly" warning, expected at
    every load of the demo's random stand-ins, and, if ``explain``, say once why."""
    logging.getLogger().addFilter(
        lambda record: "No pretrained weights loaded" not in record.getMessage())
    if explain:
        logging.getLogger(__name__).info(
            "demo: the feedback and evaluation models are tiny stand-ins with random weights (no "
            "pretrained weights to load): their scores check the plumbing, not image quality")


def run_script(main: Callable, usage: str, config_flag: str = "config") -> None:
    """``absl.app.run(main)`` for the scripts, where config and input errors end the program with
    the message alone (``error: ...`` on stderr, exit status 2 for the command line, 1 for input
    found bad while running) instead of a traceback, and ``--help`` lists the config keys.

    usage: the script's docstring, printed first by ``--help``.
    """
    from absl import app

    def parse(argv: list[str]) -> list[str]:
        return parse_command_line(argv, usage, config_flag)

    def main_reporting_input_errors(argv):
        try:
            return main(argv)
        except (ValueError, OSError) as error:
            if not raised_by_us(error):
                raise
            exit_with_message(str(error), status=1)

    app.run(main_reporting_input_errors, flags_parser=parse)


def parse_command_line(argv: list[str], usage: str, config_flag: str) -> list[str]:
    """absl's flag parsing, with ``--help`` answered by :func:`print_help` and every config or flag
    error answered by :func:`exit_with_message`."""
    from absl import flags

    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print_help(argv, usage, config_flag, full="--helpfull" in argv)
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, OSError, ValueError) as error:
        exit_with_message(command_line_error_message(error, argv, config_flag), status=2)


def command_line_error_message(error: BaseException, argv: list[str], config_flag: str) -> str:
    """One or two lines naming the flag, config file or config key at fault."""
    root = innermost_cause(error)
    if isinstance(root, KeyError):  # ml_collections: an override names no key of the config
        return unknown_key_message(root.args[0] if root.args else "", argv, config_flag)
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) == 1:  # absl's own "flag --x=y: reason"
        return lines[0]
    reason = [line.strip() for line in str(root).strip().splitlines() if line.strip()][-1]
    return f"--{config_flag} {config_argument(argv, config_flag)}: {reason}"


def innermost_cause(error: BaseException) -> BaseException:
    """The first exception of a chain of ``raise ... from`` and exceptions raised while handling."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def unknown_key_message(key: str, argv: list[str], config_flag: str) -> str:
    """``--config.a.b=...: no key 'b' in config/x.py (did you mean 'c'?)``, the suggestion taken
    from the keys next to the misspelt one."""
    prefix = f"--{config_flag}."
    for arg in argv[1:]:
        path = arg.split("=", 1)[0][len(prefix):] if arg.startswith(prefix) else ""
        parts = path.split(".")
        if key not in parts:
            continue
        config_file = config_argument(argv, config_flag)
        message = f"{arg.split('=', 1)[0]}: no key '{key}' in {config_file}"
        siblings = sibling_keys(config_file, parts[: parts.index(key)])
        close = difflib.get_close_matches(key, siblings, n=1)
        return message + (f" (did you mean '{'.'.join([*parts[:parts.index(key)], close[0]])}'?)" if close else "")
    return f"no config key '{key}'"


def sibling_keys(config_file: str, parent: list[str]) -> list[str]:
    """Keys of the config group ``parent`` (a list of keys) in ``config_file``; empty if unreadable."""
    try:
        group = load_config_file(config_file)
        for key in parent:
            group = group[key]
        return list(group.keys())
    except Exception:  # noqa: BLE001 - only a suggestion is lost
        return []


def config_argument(argv: list[str], config_flag: str) -> str:
    """The value of ``--config`` on the command line (``path[:preset]``), or the flag's default."""
    from absl import flags

    for i, arg in enumerate(argv):
        if arg.startswith(f"--{config_flag}="):
            return arg.split("=", 1)[1]
        if arg == f"--{config_flag}" and i + 1 < len(argv):
            return argv[i + 1]
    return flags.FLAGS[config_flag].default_as_str.strip("'")


def load_config_file(argument: str):
    """The ConfigDict of ``path[:preset]``, loaded as ``--config`` loads it."""
    from ml_collections.config_flags import config_flags

    return config_flags.ConfigFileFlagParser(name="config").parse(argument)


def raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in this package: a check of ours
    refused a config value or an input (a bug elsewhere keeps its traceback)."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    return Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def exit_with_message(message: str, status: int) -> None:
    """End the program with ``error: message`` on stderr and ``status``.

    In a launch of several processes the launcher prints its own failure report after ours, so
    the first local process leaves the message to a small process that prints it once the
    launcher has exited (our message is then the last line); the other local processes wait to be
    stopped by the launcher, and report only if they are not (their error is theirs alone).
    """
    text = f"error: {message}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if int(os.environ.get("LOCAL_RANK", "0")) > 0:
            time.sleep(10)
        subprocess.Popen([sys.executable, "-c", _PRINT_AFTER_EXIT, str(os.getppid()), text],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    else:
        print(text, file=sys.stderr)
    sys.exit(status)


# Run as ``python -c``: waits (at most 5 minutes) until process argv[1] has exited or is a zombie,
# then prints argv[2] on stderr.
_PRINT_AFTER_EXIT = """
import os, sys, time
pid, text = int(sys.argv[1]), sys.argv[2]
def gone():
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
deadline = time.monotonic() + 300
while not gone() and time.monotonic() < deadline:
    time.sleep(0.05)
print(text, file=sys.stderr, flush=True)
"""


def print_help(argv: list[str], usage: str, config_flag: str, full: bool) -> None:
    """The script's usage, then every config key of the chosen config file with its value there and
    its meaning (the comment next to it in ``config/base.py`` or the file); ``full`` adds absl's flags."""
    from absl import flags

    argument = config_argument(argv, config_flag)
    print(usage.strip() + "\n")
    try:
        config = load_config_file(argument)
    except Exception as error:  # noqa: BLE001 - help still shows the flags
        print(f"(the config {argument} could not be loaded: {error})")
    else:
        print(f"Config keys of {argument} (override with --{config_flag}.KEY=VALUE):")
        meanings = key_meanings(Path(argument.split(":", 1)[0]))
        rows = [(key, repr(value)) for key, value in flat_items(config)]
        width = min(40, max(len(f"{key} = {value}") for key, value in rows))
        for key, value in rows:
            line = f"{key} = {value}"
            meaning = meanings.get(key, "")
            print(f"  {line:<{width}}  {meaning}".rstrip() if meaning else f"  {line}")
    print(flags.FLAGS.get_help() if full else "\n--helpfull also lists absl's own flags.")


def flat_items(config, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a ConfigDict, in definition order."""
    items = []
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys") and hasattr(value, "lock"):
            items += flat_items(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def key_meanings(config_file: Path) -> dict[str, str]:
    """Dotted config key -> its comment, from ``config/base.py`` (next to ``config_file``) and from
    ``config_file`` itself, whose comments win."""
    meanings = {}
    for path in dict.fromkeys([config_file.with_name("base.py"), config_file]):
        if path.is_file():
            meanings.update(comments_of_assignments(path.read_text()))
    return meanings


def comments_of_assignments(source: str) -> dict[str, str]:
    """Dotted key -> comment of each ``config.a.b = ...`` (or ``alias.b = ...``) of a config file:
    the comment-only lines right above the assignment, then the comment ending its line."""
    lines = source.splitlines()
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    comment_only = {number for number in comments if lines[number - 1].lstrip().startswith("#")}
    assignments = sorted((node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)),
                         key=lambda node: node.lineno)
    aliases, meanings = {"config": ""}, {}
    for node in assignments:
        keys = [dotted_key(target, aliases) for target in node.targets]
        key = next((k for k in keys if k), None)
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id != "config":
                aliases[target.id] = key if key else target.id
        block = comment_lines_above(comments, comment_only, node.lineno)
        if node.lineno in comments and node.lineno not in comment_only:
            block.append(node.lineno)
        if key and block:
            meanings[key] = " ".join(comments[number] for number in block)
    return meanings


def dotted_key(target: ast.expr, aliases: dict[str, str]) -> str | None:
    """``config.sample.num_steps`` -> ``sample.num_steps`` (through ``aliases``); None otherwise."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if not parts or not isinstance(target, ast.Name) or target.id not in aliases:
        return None
    return ".".join(part for part in [aliases[target.id], *reversed(parts)] if part)


def comment_lines_above(comments: dict[int, str], comment_only: set[int], line: int) -> list[int]:
    """Line numbers of the comment-only lines right above ``line``, top first, up to a section
    header ``# ---- name ----``."""
    block, number = [], line - 1
    while number in comment_only and not comments[number].startswith("----"):
        block.insert(0, number)
        number -= 1
    return block
