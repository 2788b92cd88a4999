"""The demo commands of the README and the issues, run exactly as a user types them.

Each runs in a fresh working folder holding ``scripts/`` and ``config/`` (links to the repository),
with the session's build cache (``$EDITSPECIALISTS_CACHE``), so the demo editor is pretrained once
per cache, not once per test, and the demo reuses what the tests built.
"""

import csv
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from editspecialists.demo.assets import demo_paths
from editspecialists.training.tracking import read_metrics
from editspecialists.training.validation import VALIDATION_FILE, read_rows
from tests.helpers import launch, two_cpu_processes

REPO = Path(__file__).resolve().parents[1]
# The full demo's validation at the size of the checks below: every epoch, 16 held-out edits
# (config/demo.py's own, 64 edits every 10 epochs, measures learning; these runs check the plumbing).
SMALL_VALIDATION = "--config.val.every=1 --config.val.seeds=2"
pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(scripts_dir, demo_assets_root) -> Path:
    """:func:`scripts_dir` with every demo asset built in the cache."""
    return scripts_dir


def run_command(command: str, cwd: Path, timeout: int = 900, console: bool = False) -> str:
    """:func:`launch`, failing the test with the output on error; returns stdout + stderr."""
    result = launch(command, cwd, timeout, console)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command!r} failed:\n{output[-6000:]}"
    return output


def terminal_lines(output: str) -> list[str]:
    """The non-blank lines a terminal shows once it has printed ``output``: a carriage return goes
    back to the start of the line (what follows overwrites it), ESC[nA moves n lines up, ESC[K
    clears to the end of the line (how progress bars redraw in place and vanish)."""
    lines, row, column = [""], 0, 0
    for token in re.split(r"(\r|\n|\x1b\[[0-9;]*[A-Za-z])", output):
        if token == "\n":
            row, column = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            column = 0
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token.endswith("K"):
                lines[row] = lines[row][:column]
        elif token:
            line = lines[row].ljust(column)
            lines[row] = line[:column] + token + line[column + len(token):]
            column += len(token)
    return [line.rstrip() for line in lines if line.strip()]


# The console of the README's first command with the demo assets built, as the README states it
# ("Two commands"): at most this many lines before the first epoch line, per epoch (counted from
# the first epoch line to the last) and after the last epoch line. Progress bars that redraw in
# place count as the lines they leave on the screen.
CONSOLE_LINES_AT_START = 8  # the batch arithmetic, the held-out set, the masks, the base model's validation
CONSOLE_LINES_PER_EPOCH = 2  # the epoch's line, its validation's (val.every 1)
CONSOLE_LINES_AT_END = 4  # the last validation, the finished epoch bar, the weight check, the run folder
EPOCH_LINE = re.compile(r"^epoch \d+ \(\d+/\d+\) \| ")


def check_console_budget(output: str, epochs: int) -> None:
    """The console keeps to the budget above and shows every epoch's line once."""
    lines = terminal_lines(output)
    shown = "\n".join(lines)
    epoch_rows = [i for i, line in enumerate(lines) if EPOCH_LINE.match(line)]
    assert len(epoch_rows) == epochs, shown
    assert epoch_rows[0] <= CONSOLE_LINES_AT_START, shown
    assert epoch_rows[-1] - epoch_rows[0] + 1 <= CONSOLE_LINES_PER_EPOCH * epochs, shown
    assert len(lines) - epoch_rows[-1] - 1 <= CONSOLE_LINES_AT_END, shown
    assert lines[-1].startswith("run folder logs/demo_brightness/"), shown


def cache_markers(root: Path) -> dict[str, float]:
    """Modification time of every asset's completion marker in the cache."""
    return {str(marker): marker.stat().st_mtime for marker in root.glob("*/.complete")}


def readme_demo_command() -> str:
    """The README's first command without its ``pip install -e . &&`` prefix."""
    block = re.search(r"```bash\n(pip install -e \. && accelerate launch [^\n]*)\n```",
                      (REPO / "README.md").read_text())
    assert block, "README.md must start with the install-and-run-the-demo command"
    return block.group(1).split("&&", 1)[1].strip()


def only_run(logdir: Path) -> Path:
    runs = [path for path in logdir.iterdir() if path.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_readme_demo_raises_brightness_and_starts_at_ratio_one(workdir, tiny_root):
    """Issue 8's check: the mean brightness of the last epochs exceeds the first epochs' by more
    than half the per-image standard deviation; the first optimizer step has ratio 1, clipfrac 0.
    Issue 16's: a second run in the same cache builds nothing, and no launch warns about guessed
    accelerate settings. Issue 28's: both consoles keep to the README's line budget."""
    command = readme_demo_command()
    assert command == ("accelerate launch -q --config_file config/accelerate_demo.yaml scripts/train.py "
                       "--config config/demo.py:brightness")
    first = run_command(command, workdir, console=True)
    check_console_budget(first, epochs=12)

    run = only_run(workdir / "logs" / "demo_brightness")
    records = read_metrics(run)
    epochs = [r for r in records if "brightness_mean" in r]
    steps = [r for r in records if "step" in r]
    assert len(epochs) == 12
    means = np.array([r["brightness_mean"] for r in epochs])
    first_std = np.mean([r["brightness_std"] for r in epochs[:3]])
    gain = means[-3:].mean() - means[:3].mean()
    assert gain > 0.5 * first_std, f"brightness per epoch {means.round(3)}, std {first_std:.3f}"
    assert steps[0]["step"] == 1
    assert steps[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert steps[0]["clipfrac"] == 0
    assert sorted(path.name for path in (run / "images").iterdir())[-1].endswith(".png")
    # Issue 24: the held-out validation shows the reward hacking the training scores hide: edits
    # brighter than the base model's (3.6 standard errors, 2026-12-08), with the background lost
    # (reconstruction: 9 to 10 standard errors worse in every measured build of the assets) and
    # the depth structure worse (4.2 standard errors; 1.9 to 3 with the earlier demo editor, with
    # the feedback stand-ins' weights as each machine trains them).
    last = [r for r in records if "after_epochs" in r][-1]
    assert last["after_epochs"] == 12
    assert last["val/brightness_delta"] > 2 * last["val/brightness_delta_se"]
    assert last["val/reconstruction_delta"] > 2 * last["val/reconstruction_delta_se"], last
    assert last["val/structural_delta"] > 0, last
    assert (run / "validation" / "after_012.png").is_file()

    markers = cache_markers(tiny_root)
    second = run_command(command + " --config.num_epochs=1", workdir, console=True)
    check_console_budget(second, epochs=1)
    assert "building " not in second and "demo assets:" not in second, second[-3000:]
    assert cache_markers(tiny_root) == markers
    for output in (first, second):
        assert "were not passed to `accelerate launch`" not in output


def test_misspelt_key_ends_the_readme_command_with_one_line(scripts_dir):
    result = launch(readme_demo_command() + " --config.sample.num_step=3", scripts_dir)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) <= 3, result.stderr
    assert lines[-1] == ("error: --config.sample.num_step: no key 'num_step' in config/demo.py:brightness "
                         "(did you mean 'sample.num_steps'?)")


def test_misspelt_key_is_one_line_of_a_two_process_launch_before_the_launchers_report(scripts_dir):
    """Printed once, by the first process, with the note that the launcher's report follows."""
    result = launch(f"ACCELERATE_USE_CPU=1 {shlex.join(two_cpu_processes())} scripts/train.py "
                    "--config config/demo.py --config.num_step=3", scripts_dir)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    error = "error: --config.num_step: no key 'num_step' in config/demo.py (did you mean 'num_epochs'?)"
    assert result.stderr.count("no key 'num_step'") == 1 and error in lines, result.stderr[-3000:]
    assert lines[lines.index(error) + 1] == "(rank 0 of 2: the launcher's report of this failed process follows)"
    assert "ChildFailedError" in "\n".join(lines[lines.index(error):])


def test_missing_input_folder_ends_evaluation_with_the_message_alone(scripts_dir):
    result = launch("python scripts/evaluate.py --config config/eval.py:demo --config.inputimg_dir=no/such/folder",
                    scripts_dir)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert lines[-1] == "error: --config.inputimg_dir: input folder no/such/folder does not exist", result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_help_lists_config_keys_with_defaults_and_meanings(scripts_dir):
    output = run_command("python scripts/train.py --help", scripts_dir)
    assert "Fine-tune InstructPix2Pix" in output
    assert "Config keys of config/base.py" in output
    rows = {line.split(" = ")[0].strip(): line for line in output.splitlines() if " = " in line}
    assert rows["sample.num_steps"].split(" = ")[1].startswith("100")
    assert "inputs per process per sampling batch" in rows["sample.batch_size"]
    assert "models.detector" in rows and "reward.weights.structural" in rows
    assert "--verbose: show every library's log lines and progress bars" in output
    demo = run_command("python scripts/train.py --config config/demo.py:brightness --helpfull", scripts_dir)
    assert "num_epochs = 12" in demo and "--flagfile" in demo


def test_two_process_cpu_demo_with_full_ai_feedback(workdir):
    """Issue 5's check: two CPU processes, both announced, identical weights at the end. Issue 24's:
    the held-out validation of two processes writes the rows of one; the base-vs-specialist
    evaluation of the run reports both models and paired differences of its per-edit values."""
    output = run_command(f"ACCELERATE_USE_CPU=1 {shlex.join(two_cpu_processes())} scripts/train.py "
                         f"--config config/demo.py --config.num_epochs=2 {SMALL_VALIDATION}", workdir)

    assert "num_processes = 2" in output
    assert "trainable weights identical on all 2 processes" in output
    run = only_run(workdir / "logs" / "demo")
    epochs = [r for r in read_metrics(run) if "semantic_mean" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(np.isfinite([r["semantic_mean"], r["structural_mean"]]).all() for r in epochs)
    assert (run / "checkpoints" / "checkpoint_0002").is_dir()

    run_command("accelerate launch -q --config_file config/accelerate_demo.yaml scripts/train.py --config "
                f"config/demo.py {SMALL_VALIDATION} --config.num_epochs=1 --config.logdir=logs/one", workdir)
    two = [row for row in read_rows(run / VALIDATION_FILE) if row["after_epochs"] == 0]
    one = [row for row in read_rows(only_run(workdir / "logs" / "one") / VALIDATION_FILE) if row["after_epochs"] == 0]
    assert len(two) == 16 and [(r["input"], r["seed"]) for r in two] == [(r["input"], r["seed"]) for r in one]
    for row_two, row_one in zip(two, one):
        for name in ("semantic", "structural", "reconstruction"):
            assert row_two[name] == pytest.approx(row_one[name], rel=1e-4, abs=1e-6), (row_two, row_one)

    table = run_command(f"python scripts/evaluate.py --config config/eval.py:demo --config.base_vs_specialist={run}",
                        workdir)
    out = workdir / "outputs" / "demo_eval" / "car_lego_base_vs_specialist"
    comparison = json.loads((out / "comparison.json").read_text())
    with open(out / "comparison.csv") as handle:
        per_edit = list(csv.DictReader(handle))
    assert comparison["edits_compared"] == len(per_edit) == 16
    assert len(comparison["metrics"]) == 19 and comparison["skipped"] == {}
    for name, metric in comparison["metrics"].items():
        assert np.isfinite([metric["base"], metric["specialist"]]).all(), name
        diffs = [float(row[f"{name}_specialist"]) - float(row[f"{name}_base"]) for row in per_edit]
        assert metric["delta"] == pytest.approx(np.mean(diffs), abs=1e-9), name
        assert metric["delta_se"] == pytest.approx(np.std(diffs, ddof=1) / 4, abs=1e-9), name
        assert f"\n{name} " in table


def test_generate_then_evaluate_on_the_demo(workdir):
    """Issue 6's round trip: edits, manifest, then a JSON and a CSV with every metric finite."""
    run_command("python scripts/generate.py --config config/demo.py", workdir)
    edits = workdir / "outputs" / "demo_edits" / "car_lego"
    inputs = sorted(path.name for path in Path(demo_paths()["inputs"]).iterdir())
    assert sorted(path.name for path in edits.glob("edit_*.png")) == [f"edit_{name}" for name in inputs]
    manifest = [json.loads(line) for line in (edits / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["input"] for entry in manifest) == inputs

    run_command("python scripts/evaluate.py --config config/eval.py:demo", workdir)
    results = json.loads((workdir / "outputs" / "demo_eval" / "car_lego.json").read_text())
    csv_lines = (workdir / "outputs" / "demo_eval" / "car_lego_per_image.csv").read_text().splitlines()
    assert len(csv_lines) == len(inputs) + 1
    metrics = ["semantic_score", "structural_score", "l2_out", "clip_txt", "clip_dir", "clipSim_gen_sty",
               "clipSim_gen_input", "dinoSim_gen_sty", "dinoSim_gen_input", "dreamsimSim_gen_sty",
               "dreamsimSim_gen_input", "hps_score", "imgrew_score", "pick_score"]
    assert results["skipped"] == {}
    for metric in metrics:
        assert results["metrics"][metric]["count"] == len(inputs), metric
        assert np.isfinite(results["metrics"][metric]["mean"]), metric
        assert metric in csv_lines[0], metric


LEARNING_HEADING = "#### Does the full method learn on the demo?"
LATEST_RUN = "$(ls -d logs/demo/*/ | tail -n 1)"


def readme_learning_commands() -> list[str]:
    """The commands of the README's block under :data:`LEARNING_HEADING`: train, plot, evaluate."""
    text = (REPO / "README.md").read_text()
    assert LEARNING_HEADING in text, f"README.md has no section {LEARNING_HEADING!r}"
    block = re.search(r"```bash\n(.*?)\n```", text.split(LEARNING_HEADING, 1)[1], flags=re.S)
    return block.group(1).splitlines()


def paired(rows: list[dict], score: str, after_epochs: int) -> tuple[float, float]:
    """(mean, standard error) of ``score`` after ``after_epochs`` minus the base model's, edit by
    edit (same input and seed), from validation.jsonl's rows."""
    base = {(r["input"], r["seed"]): r[score] for r in rows if r["after_epochs"] == 0}
    diffs = np.array([r[score] - base[(r["input"], r["seed"])] for r in rows if r["after_epochs"] == after_epochs])
    return diffs.mean(), diffs.std(ddof=1) / np.sqrt(len(diffs))


@pytest.mark.learning
@pytest.mark.skipif(os.environ.get("EDITSPECIALISTS_SKIP_LEARNING") == "1", reason="EDITSPECIALISTS_SKIP_LEARNING=1")
def test_readme_full_demo_beats_the_base_model_on_held_out_edits(workdir):
    """Issue 25's learning check: the README's full-demo commands as they stand (the method's own
    objective, the four feedback stand-ins, 60 epochs, 64 held-out edits validated every 10).

    Asserted, as measured for the default seed (42; README table, 2026-12-08): issue 25's bar,
    the held-out semantic score better than the base model's by more than 2 standard errors (4.1
    there) and the structural score no worse than the base model's by more than one standard error
    (−0.0012 ± 0.0007 there: 2.7 standard errors within the bar); the semantic gain larger after 60
    epochs than after 10; the base-vs-specialist evaluation agrees (semantic score lower, the
    car's patches nearer the style's). How many other seeds meet the bar: README.
    """
    train, plot, evaluate = readme_learning_commands()
    run_command(train, workdir, timeout=1500)
    run = only_run(workdir / "logs" / "demo")
    rows = read_rows(run / VALIDATION_FILE)
    assert sorted({r["after_epochs"] for r in rows}) == [0, 10, 20, 30, 40, 50, 60]
    assert sum(r["after_epochs"] == 60 for r in rows) == 64

    semantic, semantic_se = paired(rows, "semantic", 60)
    assert semantic < -2 * semantic_se, (semantic, semantic_se)
    assert semantic < paired(rows, "semantic", 10)[0], "the semantic gain does not grow with the epochs"
    last = [r for r in read_metrics(run) if r.get("after_epochs") == 60][-1]
    assert last["val/semantic_delta"] == pytest.approx(semantic, abs=1e-9)
    assert last["val/semantic_delta_se"] == pytest.approx(semantic_se, abs=1e-9)
    structural, structural_se = paired(rows, "structural", 60)
    assert structural < structural_se, (structural, structural_se)

    run_command(plot.replace(LATEST_RUN, str(run)), workdir)
    assert (run / "validation" / "curves.png").is_file()
    run_command(evaluate.replace(LATEST_RUN, str(run)), workdir)
    comparison = json.loads((workdir / "outputs" / "demo_eval" / "car_lego_base_vs_specialist" /
                             "comparison.json").read_text())
    assert comparison["edits_compared"] == 64
    metrics = comparison["metrics"]
    assert metrics["semantic_score"]["delta"] < -2 * metrics["semantic_score"]["delta_se"], metrics["semantic_score"]
    assert metrics["dreamsimSim_gen_sty"]["delta"] > 2 * metrics["dreamsimSim_gen_sty"]["delta_se"], metrics
