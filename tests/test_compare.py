"""Comparing runs: the side-by-side table and its JSON hold each summary's figures."""
import json
import subprocess
from pathlib import Path

import pytest

from mnist_cnn_progression.pipeline.compare import compare, main
from conftest import module_command
from tests.report_fixtures import make_run, markdown_table


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: baseline and conv2_relu; run B (another seed): baseline and the ensemble."""
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root / "a", stages=("baseline", "conv2_relu"), preset="fast", save_models=False),
            make_run(root / "b", stages=("baseline", "ensemble"), preset="seed", seed=1, save_models=False)]


def summaries(runs):
    return [json.loads((run / "summary.json").read_text())["stages"] for run in runs]


def test_comparison_holds_every_stage_of_every_run(runs):
    result = compare(runs)
    assert [run["preset"] for run in result["runs"]] == ["fast", "seed"]
    assert [stage["stage"] for stage in result["stages"]] == ["baseline", "conv2_relu", "ensemble"]
    a, b = summaries(runs)
    by_id = {stage["stage"]: stage["runs"] for stage in result["stages"]}
    assert by_id["conv2_relu"][1] is None and by_id["ensemble"][0] is None
    assert by_id["baseline"][0]["test_accuracy"] == a["baseline"]["test_accuracy"]
    assert by_id["ensemble"][1]["wall_seconds"] == b["ensemble"]["wall_seconds"]


def test_markdown_table_side_by_side(runs, capsys):
    main([str(run) for run in runs])
    output = capsys.readouterr().out
    assert f"- A: {runs[0]} (preset fast, seed 0)" in output
    rows = {row["Stage"]: row for row in markdown_table(output, "\n\n")}
    a, b = summaries(runs)
    baseline = rows["baseline"]
    assert float(baseline["A test %"]) == pytest.approx(100 * a["baseline"]["test_accuracy"], abs=0.005)
    assert float(baseline["B test %"]) == pytest.approx(100 * b["baseline"]["test_accuracy"], abs=0.005)
    assert float(baseline["B − A (pp)"]) == pytest.approx(
        100 * (b["baseline"]["test_accuracy"] - a["baseline"]["test_accuracy"]), abs=0.005)
    assert baseline["Reference %"] == "97.80" and int(baseline["A best epoch"]) == a["baseline"]["best_epoch"]
    assert rows["ensemble"]["A test %"] == rows["ensemble"]["A wall time"] == "–"


def test_json_option(runs, capsys):
    main(["--json", *map(str, runs)])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(compare(runs)))


def test_runs_as_a_module(runs):
    done = subprocess.run([*module_command("pipeline.compare"), *map(str, runs)], capture_output=True,
                          text=True, cwd=Path(__file__).parents[1], check=True)
    assert "| Stage | Reference % | A test % | B test % |" in done.stdout
