"""Every command of the README's shell blocks copies and runs as written: each is checked against
what it calls, whatever the README says today.

- ``python scripts/X.py ...`` and ``accelerate launch [options] scripts/X.py ...``: the script's own
  flags and its ``--config`` file, keys and values, parsed as the script parses them
  (tests/readme_flags_worker.py); accelerate's options by accelerate's own parser, with ``-q`` (one
  line on failure), a ``--config_file`` must exist;
- ``pip install``: the extras exist in setup.py, and version ranges are setup.py's;
- ``bash download_repos.sh``: its options are among those it accepts, a ``--config`` file exists;
- ``accelerate config`` and ``pytest``: taken as they are.

A command of another kind fails the test until a check for it is added here. Placeholders
(``logs/<run>``, ``$(...)``) are values like any other.
"""

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys

from tests.helpers import REPO

README = REPO / "README.md"
SUBSTITUTION = "SUBSTITUTED"  # stands for a $(...) of the shell


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", markdown, flags=re.S)


def commands_of(block: str) -> list[list[str]]:
    """The commands of a shell block as word lists: continuation lines joined, comments dropped,
    ``&&`` chains split, ``$(...)`` replaced by a placeholder word, ``[--optional]`` unbracketed."""
    text = re.sub(r"\$\([^)]*\)", SUBSTITUTION, block.replace("\\\n", " "))
    commands = []
    for line in text.splitlines():
        words = [re.sub(r"^\[(--.*)\]$", r"\1", word) for word in shlex.split(line, comments=True)]
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:end])
            words = words[end + 1:]
    return [command for command in commands if command]


def readme_commands() -> list[list[str]]:
    """Every command of the README's shell blocks, without leading ``VAR=value`` assignments."""
    commands = []
    for block in shell_blocks(README.read_text()):
        for words in commands_of(block):
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                words = words[1:]
            commands.append(words)
    return commands


def setup_requirements() -> tuple[set[str], dict[str, str]]:
    """(extras of setup.py, {package: version specifier} of its install_requires)."""
    text = (REPO / "setup.py").read_text()
    extras = set(re.findall(r'^\s*"(\w+)": \[', text, flags=re.M))
    ranges = dict(re.findall(r'"([A-Za-z0-9_.\-]+)((?:[<>=!~]=?[^",]+,?)+)"', text))
    return extras, ranges


def pip_problems(arguments: list[str]) -> list[str]:
    assert arguments[0] == "install", arguments
    extras, ranges = setup_requirements()
    problems = []
    for argument in arguments[1:]:
        if argument.startswith(".["):
            problems += [f"pip: no extra {extra!r} in setup.py"
                         for extra in argument[2:-1].split(",") if extra not in extras]
        elif re.match(r"^[A-Za-z]", argument) and not argument.startswith("http"):
            package, specifier = re.match(r"^([A-Za-z0-9_.\-]+)(.*)$", argument).groups()
            if specifier and ranges.get(package) != specifier:
                problems.append(f"pip: {argument} differs from setup.py's {package}{ranges.get(package)}")
    return problems


def download_script_problems(arguments: list[str]) -> list[str]:
    accepted = set(re.findall(r"^\s*(--[\w-]+)\)", (REPO / "download_repos.sh").read_text(), flags=re.M))
    problems = [f"download_repos.sh: unknown option {word}"
                for word in arguments if word.startswith("--") and word not in accepted]
    if "--config" in arguments and not (REPO / arguments[arguments.index("--config") + 1]).is_file():
        problems.append(f"download_repos.sh: no config file {arguments[arguments.index('--config') + 1]}")
    return problems


def launch_problems(arguments: list[str]) -> list[str]:
    """accelerate's parser on the launch options; the script's part is checked by the worker."""
    from accelerate.commands.launch import launch_command_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text
            options = launch_command_parser().parse_args(arguments)
    except SystemExit:
        return [f"accelerate launch refuses {' '.join(arguments)}"]
    if options.config_file and not (REPO / options.config_file).is_file():
        return [f"accelerate launch: no config file {options.config_file}"]
    if not options.quiet:
        return ["accelerate launch without -q: a failed run would end in accelerate's traceback"]
    return []


def script_call(words: list[str]) -> tuple[str, list[str]] | None:
    """(script, its arguments) of a command that runs a script of scripts/, else None."""
    scripts = [i for i, word in enumerate(words) if word.startswith("scripts/") and word.endswith(".py")]
    return (words[scripts[0]], words[scripts[0] + 1:]) if scripts else None


# One mistake each, checked in the same worker run as the README's commands.
MISTAKES = {
    ("scripts/export.py", ("--config.load_checkpoint=logs/x", "--outt=y")): "Unknown command line flag 'outt'",
    ("scripts/train.py", ("--config", "config/demo.py:brightness", "--config.num_epoch=3")):
        "--config.num_epoch: no key 'num_epoch' in config/demo.py:brightness (did you mean 'num_epochs'?)",
    ("scripts/train.py", ("--config.sample.num_steps=many",)): "flag --config.sample.num_steps=many:",
}


def parse_script_commands(script_commands: dict[str, list[list[str]]]) -> dict[tuple, str]:
    """``{(script, arguments): error}`` of the command lines the scripts' flags refuse."""
    result = subprocess.run([sys.executable, "tests/readme_flags_worker.py", json.dumps(script_commands)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {(script, tuple(arguments)): error
            for script, arguments, error in json.loads(result.stdout.strip().splitlines()[-1])}


def test_readme_commands_match_what_they_call():
    commands = readme_commands()
    assert len(commands) > 10, commands
    problems, script_commands = [], {}
    for script, arguments in MISTAKES:
        script_commands.setdefault(script, []).append(list(arguments))
    for words in commands:
        program, arguments = words[0], words[1:]
        called = script_call(words)
        if called:
            script, script_arguments = called
            if not (REPO / script).is_file():
                problems.append(f"no script {script}")
                continue
            script_commands.setdefault(script, []).append(script_arguments)
        if program == "python" and called and words[1] == called[0]:
            continue
        if words[:2] == ["accelerate", "launch"] and called:
            problems += launch_problems(arguments[1:])
        elif words[:2] == ["accelerate", "config"] or words == ["pytest"]:
            continue
        elif program == "pip":
            problems += pip_problems(arguments)
        elif words[:2] == ["bash", "download_repos.sh"]:
            problems += download_script_problems(arguments[1:])
        else:
            problems.append(f"a README command of a kind this test does not check: {shlex.join(words)}")
    refused = parse_script_commands(script_commands)
    for command, start in MISTAKES.items():  # the check itself works
        assert refused.pop(command, "").startswith(start), (command, refused)
    problems += [f"{script} {shlex.join(arguments)}: {error}" for (script, arguments), error in refused.items()]
    assert problems == []


def test_the_checks_catch_a_misspelt_extra_range_option_and_file():
    assert pip_problems(["install", "-e", ".[tests]"]) == ["pip: no extra 'tests' in setup.py"]
    assert pip_problems(["install", "torch>=2.5,<2.15"])[0].startswith("pip: torch>=2.5,<2.15 differs")
    assert download_script_problems(["--evals"]) == ["download_repos.sh: unknown option --evals"]
    assert launch_problems(["-q", "--num_proceses", "2", "scripts/train.py"]) == [
        "accelerate launch refuses -q --num_proceses 2 scripts/train.py"]
    assert launch_problems(["-q", "--config_file", "config/none.yaml", "scripts/train.py"]) == [
        "accelerate launch: no config file config/none.yaml"]
    assert launch_problems(["scripts/train.py"]) == [
        "accelerate launch without -q: a failed run would end in accelerate's traceback"]
