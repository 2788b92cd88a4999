"""Held-out validation's pure parts: schedule, cost, rows file, paired summary, console line."""

import json
import math

import pytest

from editspecialists.training.run_folder import epoch_of, keep_rows_before
from editspecialists.training.validation import (ValidationSet, append_rows, read_rows, summarise, validation_cost,
                                                 validation_due, validation_line)


def test_validation_runs_before_training_every_k_epochs_and_after_the_last():
    assert [k for k in range(8) if validation_due(k, every=3, num_epochs=7)] == [0, 3, 6, 7]
    assert [k for k in range(4) if validation_due(k, every=1, num_epochs=3)] == [0, 1, 2, 3]
    assert not any(validation_due(k, every=0, num_epochs=3) for k in range(4))


def test_cost_is_the_share_of_an_epochs_denoising_work():
    # 16 edits x 10 steps against 8 inputs x 2 edits x (10 sampling steps + 4 x 5 trained steps)
    assert validation_cost(16, 10, 8, 2, 5) == pytest.approx(160 / 480)
    # the default config with 10 held-out inputs x 2 seeds on one process: 2000 / 7936
    assert validation_cost(20, 100, 8, 2, 99) == pytest.approx(2000 / 7936)


def rows(after, values, name="semantic"):
    return [{"after_epochs": after, "input": f"car_{i}.png", "seed": 7 + i, name: v} for i, v in enumerate(values)]


def test_summary_pairs_each_edit_with_the_base_edit_of_the_same_input_and_seed():
    base = rows(0, [0.50, 0.40, 0.60, 0.55])
    current = list(reversed(rows(3, [0.45, 0.38, 0.52, 0.50])))  # order does not matter: keys pair them
    summary = summarise(current, base, {"semantic": True})
    diffs = [-0.05, -0.02, -0.08, -0.05]
    mean = sum(diffs) / 4
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3) / 2
    assert summary["val/semantic_delta"] == pytest.approx(mean)
    assert summary["val/semantic_delta_se"] == pytest.approx(se)
    assert summary["val/semantic_mean"] == pytest.approx(0.4625)
    assert summary["val/semantic_std"] == pytest.approx(math.sqrt(sum((v - 0.4625) ** 2 for v in
                                                                       [0.45, 0.38, 0.52, 0.50]) / 4))
    line = validation_line(3, 4, summary, {"semantic": True})
    assert line.startswith("validation after 3 epochs (4 held-out edits) vs base | semantic 0.4625 (-0.05 ± 0.012:")
    assert line.endswith("better)")
    worse = validation_line(3, 4, summary, {"semantic": False})
    assert worse.endswith("worse)")
    same = summarise(base, base, {"semantic": True})
    assert (same["val/semantic_delta"], same["val/semantic_delta_se"]) == (0.0, 0.0)
    assert validation_line(0, 4, same, {"semantic": True}) == (
        "validation of the base model (4 held-out edits) | semantic 0.5125")


def test_rows_file_is_rewritten_whole_and_a_cut_row_is_ignored(tmp_path):
    path = tmp_path / "validation.jsonl"
    append_rows(path, rows(0, [0.5, 0.4]))
    append_rows(path, rows(1, [0.45, 0.41]))
    assert [row["after_epochs"] for row in read_rows(path)] == [0, 0, 1, 1]
    assert not list(tmp_path.glob("*.tmp"))
    with open(path, "a") as handle:
        handle.write('{"after_epochs": 2, "inp')  # a kill mid-write of an older, appending writer
    assert len(read_rows(path)) == 4


def test_a_resume_keeps_the_validations_of_the_epochs_it_does_not_redo(tmp_path):
    source = tmp_path / "validation.jsonl"
    append_rows(source, rows(0, [0.5]) + rows(1, [0.4]) + rows(2, [0.3]) + rows(3, [0.2]))
    assert [epoch_of(json.dumps(row)) for row in read_rows(source)] == [-1, 0, 1, 2]
    keep_rows_before(source, source, first_epoch=2)  # resuming checkpoint_0002: after 2 is its weights'
    assert [row["after_epochs"] for row in read_rows(source)] == [0, 1, 2]


def test_curves_are_the_paired_differences_of_each_validation_and_are_drawn(tmp_path):
    from PIL import Image

    from editspecialists.training.curves import difference_lines, paired_curves, plot_validation

    base = rows(0, [0.50, 0.40, 0.60])
    later = rows(2, [0.45, 0.42, 0.50])
    curves = paired_curves(base + later, ["semantic"])
    assert [point[0] for point in curves["semantic"]] == [0, 2]
    assert (curves["semantic"][0][1].mean, curves["semantic"][0][1].se) == (0.0, 0.0)
    diffs = [-0.05, 0.02, -0.10]
    mean = sum(diffs) / 3
    assert curves["semantic"][1][1].mean == pytest.approx(mean)
    assert curves["semantic"][1][1].se == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3))
    run = tmp_path / "run"
    run.mkdir()
    append_rows(run / "validation.jsonl", base + later)
    path, drawn = plot_validation(run)
    assert path == run / "validation" / "curves.png" and drawn == curves
    unpaired = paired_curves(base + [{**row, "seed": 99} for row in later], ["semantic"])
    assert unpaired["semantic"][1][1].count == 0
    assert difference_lines(unpaired, "the base model")[0].endswith("(no clear change)")
    image = Image.open(path)
    assert image.size[0] > image.size[1] > 100
    with pytest.raises(ValueError, match="holds no validation row"):
        plot_validation(tmp_path)


def test_a_run_against_its_control_pairs_each_edit_with_the_controls_after_as_many_epochs(tmp_path):
    from editspecialists.training.curves import curves_against_control, difference_lines, plot_validation

    base = rows(0, [0.50, 0.40, 0.60])
    method = base + rows(2, [0.45, 0.42, 0.50]) + rows(4, [0.30, 0.35, 0.45]) + rows(6, [0.2, 0.2, 0.2])
    control = base + list(reversed(rows(2, [0.47, 0.40, 0.55]))) + rows(4, [0.50, 0.38, 0.58])  # stopped at 4
    curves = curves_against_control(method, control, ["semantic"])["semantic"]
    assert [point[0] for point in curves] == [0, 2, 4] and (curves[0][1].mean, curves[0][1].se) == (0.0, 0.0)
    diffs = [-0.20, -0.03, -0.13]  # after 4 epochs: method - control, edit by edit
    mean = sum(diffs) / 3
    assert curves[2][1].mean == pytest.approx(mean)
    assert curves[2][1].se == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3))
    assert difference_lines({"semantic": curves}, "the control") == [
        f"semantic after 4 epochs: {mean:+.4f} ± {curves[2][1].se:.4f} against the control (better)"]

    for name, run_rows in (("method", method), ("control", control)):
        (tmp_path / name).mkdir()
        append_rows(tmp_path / name / "validation.jsonl", run_rows)
    path, drawn = plot_validation(tmp_path / "method", control_dir=tmp_path / "control")
    assert path == tmp_path / "method" / "validation" / "curves_vs_control.png" and path.is_file()
    assert drawn["semantic"] == curves

    other_base = rows(0, [0.50, 0.41, 0.60]) + rows(2, [0.47, 0.40, 0.55])
    with pytest.raises(ValueError, match=r"base validations differ \(semantic of car_1.png, seed 8: 0.4 against 0.41\)"):
        curves_against_control(method, other_base, ["semantic"])
    elsewhere = [{**row, "seed": row["seed"] + 100} for row in control]
    with pytest.raises(ValueError, match="share no held-out edit"):
        curves_against_control(method, elsewhere, ["semantic"])


def test_the_grid_shows_each_inputs_first_seed_before_any_second_one():
    """Items are input-major (3 inputs x 3 seeds here): the grid takes one edit of each input first."""
    items = [{"input": f"car_{i}.png", "seed_index": k} for i in range(3) for k in range(3)]
    vset = ValidationSet(held_out=None, items=items, inputs=None, styles=None)
    assert vset.grid_indices(4) == [0, 3, 6, 1]
    assert [items[i]["input"] for i in vset.grid_indices(3)] == ["car_0.png", "car_1.png", "car_2.png"]
    assert sorted(vset.grid_indices(20)) == list(range(9))


def test_plot_validation_prints_the_runs_difference_from_its_control_and_refuses_a_foreign_one(scripts_dir):
    from tests.helpers import launch

    base = rows(0, [0.50, 0.40, 0.60])
    folders = {"method": base + rows(2, [0.30, 0.35, 0.45]), "control": base + rows(2, [0.50, 0.38, 0.58]),
               "foreign": rows(0, [0.9, 0.9, 0.9]) + rows(2, [0.50, 0.38, 0.58])}
    for name, run_rows in folders.items():
        (scripts_dir / name).mkdir()
        append_rows(scripts_dir / name / "validation.jsonl", run_rows)
    result = launch("python scripts/plot_validation.py method --control=control", scripts_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["wrote method/validation/curves_vs_control.png",
                                          "semantic after 2 epochs: -0.1200 ± 0.0493 against the control (better)"]
    assert (scripts_dir / "method" / "validation" / "curves_vs_control.png").is_file()
    refused = launch("python scripts/plot_validation.py method --control=foreign", scripts_dir)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("error: the base validations differ (semantic of car_0.png")
    assert "Traceback" not in refused.stderr
