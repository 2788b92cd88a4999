"""Parses command lines of the scripts with the scripts' own flags, without running them
(tests/test_readme_commands.py runs it in a subprocess from the repository root).

    python tests/readme_flags_worker.py '{"scripts/train.py": [["--config", "config/base.py"], ...], ...}'

Each script is executed as a module (its flags defined, ``main`` not called). Per command line: its
own flags are parsed by absl as the script parses them, its ``--config`` and ``--config.KEY=VALUE``
arguments by ml_collections into a fresh flag set (the config file loaded, every key looked up and
every value parsed to the key's type). Prints a JSON list of ``[script, arguments, error]``.
"""

import json
import runpy
import sys

from absl import flags
from ml_collections import config_flags

from editspecialists.command_line import CONFIG_ERRORS, command_line_error_message, config_argument


def is_config_argument(argument: str) -> bool:
    return argument.split("=", 1)[0] == "--config" or argument.startswith("--config.")


def split_arguments(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(the config flag's arguments, the others); ``--config FILE`` keeps its value with it."""
    config, others = [], []
    for index, argument in enumerate(arguments):
        if argument == "--config" or (index > 0 and arguments[index - 1] == "--config"):
            config.append(argument)
        else:
            (config if is_config_argument(argument) else others).append(argument)
    return config, others


def config_error(script: str, config_arguments: list[str]) -> str:
    """Why ml_collections refuses the config arguments (empty if it accepts them)."""
    argv = [script, *config_arguments]
    default = config_argument(argv, "config")
    sys.argv = argv  # ml_collections finds the overrides in sys.argv
    fresh = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default, flag_values=fresh)
    try:
        fresh(argv)
        fresh["config"].value.keys()
    except (flags.Error, *CONFIG_ERRORS) as error:
        return command_line_error_message(error, argv, "config", default)
    return ""


def flags_error(script: str, other_arguments: list[str]) -> str:
    """Why the script's own flags refuse the arguments (empty if they accept them)."""
    try:
        flags.FLAGS([script, *other_arguments])
    except flags.Error as error:
        return str(error).strip().splitlines()[0]
    finally:
        flags.FLAGS.unparse_flags()
    return ""


def check(script: str, commands: list[list[str]]) -> list[list]:
    defined = set(flags.FLAGS)
    sys.argv = [script]
    runpy.run_path(script, run_name="readme_check")
    failures = []
    for arguments in commands:
        config_arguments, other_arguments = split_arguments(arguments)
        has_config = "config" in flags.FLAGS and "config" not in defined
        if config_arguments and not has_config:
            failures.append([script, arguments, f"{script} has no --config flag"])
            continue
        error = (config_error(script, config_arguments) if has_config else "") or flags_error(script, other_arguments)
        if error:
            failures.append([script, arguments, error])
    for name in set(flags.FLAGS) - defined:  # the next script defines its own
        delattr(flags.FLAGS, name)
    return failures


if __name__ == "__main__":
    requested = json.loads(sys.argv[1])
    print(json.dumps([failure for script, commands in requested.items() for failure in check(script, commands)]))
