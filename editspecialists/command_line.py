"""The scripts' command line: absl's flag parsing with plain one-line error messages (a misspelt
config key gets a did-you-mean hint) and a ``--help`` that lists the config keys with their values
and meanings."""

from __future__ import annotations

import difflib
import dis
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

from absl import flags

from editspecialists.config_keys import flat_items, key_meanings
from editspecialists.model_ids import ModelIdError
from editspecialists.stopping import Stopped

PACKAGE_DIR = Path(__file__).resolve().parent
SCRIPTS_DIR = PACKAGE_DIR.parent / "scripts"
# The line after an error line in a launch of several processes (see exit_with_message).
LAUNCH_REPORT_NOTE = "(rank {rank} of {world_size}: the launcher's report of this failed process follows)"
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")
# What ml_collections raises when a config file fails to load or an override fails to apply.
CONFIG_ERRORS = (KeyError, AttributeError, OSError, ValueError)
VERBOSE_FLAG = "verbose"
VERBOSE_HELP = ("show every library's log lines and progress bars, with time, level and logger (by default "
                "the console shows this package's lines and other libraries' warnings only).")
flags.DEFINE_bool(VERBOSE_FLAG, False, VERBOSE_HELP)  # every script's; read by run_script


def define_config_flag(default: str, help_text: str, name: str = "config"):
    """``config_flags.DEFINE_config_file(name, default, help_text)`` for the scripts; returns the
    flag holder.

    Without ``--config`` on the command line, ml_collections loads ``default`` and applies the
    ``--config.KEY=VALUE`` overrides here, as the script defines the flag, before :func:`run_script`
    parses the command line; an override naming no key then ends the program with the message it
    gets when ``--config`` is given.
    """
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file(name, default, help_text)
    except Exception as error:  # noqa: BLE001 - whatever the config file raises is reported in one line
        exit_with_message(command_line_error_message(error, sys.argv, name, default), status=2)


def run_script(main: Callable, usage: str, config_flag: str | None = "config") -> None:
    """``absl.app.run(main)`` for the scripts, where config and input errors end the program with
    the message alone (``error: ...`` on stderr, exit status 2 for the command line, 1 for input
    found bad while running, :func:`is_input_error`) instead of a traceback, a run stopped by a signal
    (:class:`~editspecialists.stopping.Stopped`) with its one line and status 128 + the signal,
    ``--help`` lists the config keys, and the console is set up before ``main`` runs (quiet, or
    everything with ``--verbose``).

    usage: the script's docstring, printed first by ``--help``; config_flag: the script's config
    flag, None for a script without one (its ``--help`` lists its flags).
    """
    from absl import app

    from editspecialists.launch import setup_logging

    def parse(argv: list[str]) -> list[str]:
        return parse_command_line(argv, usage, config_flag)

    def main_reporting_input_errors(argv):
        setup_logging(verbose=flags.FLAGS[VERBOSE_FLAG].value)
        try:
            return main(argv)
        except Stopped as stop:
            if str(stop):
                exit_with_message(str(stop), status=stop.status, prefix="")
            sys.exit(stop.status)
        except (ValueError, OSError) as error:
            if not is_input_error(error):
                raise
            exit_with_message(str(error), status=1)

    app.run(main_reporting_input_errors, flags_parser=parse)


def parse_command_line(argv: list[str], usage: str, config_flag: str | None) -> list[str]:
    """absl's flag parsing, with ``--help`` answered by :func:`print_help` and every config or flag
    error answered by :func:`exit_with_message`."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        if config_flag is None:
            print(usage.strip() + "\n\n" + flags.FLAGS.main_module_help() + "\n\n" + verbose_help())
        else:
            print_help(argv, usage, config_flag, full="--helpfull" in argv)
        sys.exit(0)
    try:
        remaining = flags.FLAGS(argv)
        if config_flag is not None:
            flags.FLAGS[config_flag].value.keys()  # ml_collections raises a config file's load error at first use
        return remaining
    except Exception as error:  # noqa: BLE001 - flag errors, and whatever a config file raises
        if config_flag is None:
            exit_with_message(str(error).strip().splitlines()[0], status=2)
        message = command_line_error_message(error, argv, config_flag, config_argument(argv, config_flag))
        exit_with_message(message, status=2)


def command_line_error_message(error: BaseException, argv: list[str], config_flag: str, config_file: str) -> str:
    """One or two lines naming the flag, config file or config key at fault.

    config_file: the ``path[:preset]`` the config was loaded from.
    """
    root = innermost_cause(error)
    if isinstance(root, KeyError):  # ml_collections: an override names no key of the config
        return unknown_key_message(root.args[0] if root.args else "", argv, config_flag, config_file)
    line = raising_line(root, config_file.split(":", 1)[0])
    if line:
        return f"--{config_flag} {config_file}: line {line}: {root.__class__.__name__}: {root_message(root)}"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) == 1:  # absl's own "flag --x=y: reason"
        return lines[0]
    reason = [line.strip() for line in str(root).strip().splitlines() if line.strip()][-1]
    return f"--{config_flag} {config_file}: {reason}"


def raising_line(error: BaseException, config_path: str) -> int | None:
    """The line of the config file ``config_path`` that raised ``error`` (its syntax error, or the
    deepest frame of its traceback in that file); None if the file did not raise it."""
    target = Path(config_path).resolve()
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename).resolve() == target:
        return error.lineno
    lines = []
    frame = error.__traceback__
    while frame is not None:
        if Path(frame.tb_frame.f_code.co_filename).resolve() == target:
            lines.append(frame.tb_lineno)
        frame = frame.tb_next
    return lines[-1] if lines else None


def root_message(error: BaseException) -> str:
    """The first line of an error's message (a SyntaxError's message without its position)."""
    text = error.msg if isinstance(error, SyntaxError) else str(error)
    return (text.strip().splitlines() or [""])[0]


def innermost_cause(error: BaseException) -> BaseException:
    """The first exception of a chain of ``raise ... from`` and exceptions raised while handling."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def unknown_key_message(key: str, argv: list[str], config_flag: str, config_file: str) -> str:
    """``--config.a.b=...: no key 'b' in config/x.py (did you mean 'c'?)``, the suggestion taken
    from the keys next to the misspelt one."""
    prefix = f"--{config_flag}."
    for arg in argv[1:]:
        path = arg.split("=", 1)[0][len(prefix):] if arg.startswith(prefix) else ""
        parts = path.split(".")
        if key not in parts:
            continue
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


def is_input_error(error: BaseException) -> bool:
    """Whether ``error`` (a ValueError or OSError) is shortened to its message: a check of ours
    refused a config value or an input (:func:`raised_by_us`, a :class:`ModelIdError`), or a file
    named by the input is missing, a folder or not readable. Any other, a package's own included,
    keeps its traceback."""
    path_errors = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
    return (isinstance(error, ModelIdError) or raised_by_us(error)
            or (isinstance(error, path_errors) and error.filename is not None))


def raised_by_us(error: BaseException) -> bool:
    """Whether a ``raise`` statement of this package or of its scripts raised ``error`` (the
    innermost frame of its traceback), not a call from there into another package or into C."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    code = frame.tb_frame.f_code
    path = Path(code.co_filename).resolve()
    if not (path.is_relative_to(PACKAGE_DIR) or path.is_relative_to(SCRIPTS_DIR)):
        return False
    return any(op.offset == frame.tb_lasti and op.opname == "RAISE_VARARGS" for op in dis.get_instructions(code))


def exit_with_message(message: str, status: int, prefix: str = "error: ") -> None:
    """End the program with ``prefix`` + ``message`` on stderr and ``status``.

    In a launch of several processes accelerate's own report of the failed process, which cannot
    be turned off there, follows on stderr, and a second line, :data:`LAUNCH_REPORT_NOTE`, says
    so. Every process of a launch fails alike on a bad command line or input: the first local
    process reports at once, the others first wait to be stopped by the launcher and report only
    if they are not (their error is then theirs alone).
    """
    text = f"{prefix}{message}"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        if int(os.environ.get("LOCAL_RANK", "0")) > 0:
            time.sleep(10)
        text += "\n" + LAUNCH_REPORT_NOTE.format(rank=os.environ.get("RANK", "?"), world_size=world_size)
    print(text, file=sys.stderr, flush=True)
    sys.exit(status)


def command_with(overrides: dict[str, str]) -> str:
    """The command that started this program, shell-quoted, with ``--config.KEY=VALUE`` of each of
    ``overrides`` in place of that key's own override: the command to run to go on.

    Under ``accelerate launch`` or ``torchrun`` it is the launcher's command line (on several
    machines, that of this machine's launcher)."""
    argv = launcher_argv() or [sys.executable, *sys.argv]
    for key, value in overrides.items():
        flag = f"--config.{key}"
        kept, skip_next = [], False
        for arg in argv:
            if skip_next:
                skip_next = False
            elif arg == flag:
                skip_next = True
            elif not arg.startswith(flag + "="):
                kept.append(arg)
        argv = [*kept, f"{flag}={value}"]
    return shlex.join(argv)


def launcher_argv() -> list[str] | None:
    """The command line of the launcher (the parent process) of a torchrun-style launch, None
    outside one or where it cannot be read."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode() for part in raw.split(b"\0") if part] or None


def print_help(argv: list[str], usage: str, config_flag: str, full: bool) -> None:
    """The script's usage, then every config key of the chosen config file with its value there and
    its meaning (the comment next to it in ``config/base.py`` or the file); ``full`` adds absl's flags."""
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
    print(flags.FLAGS.get_help() if full else f"\n{verbose_help()}\n--helpfull also lists absl's own flags.")


def verbose_help() -> str:
    return f"--{VERBOSE_FLAG}: {VERBOSE_HELP}"
