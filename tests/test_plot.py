"""pipeline.plot: the progression PNG made from a run's summary.json."""
import json
import subprocess

import numpy as np
from PIL import Image

from mnist_cnn_progression.pipeline.plot import progression, write_plot
from conftest import module_command
from tests.report_fixtures import make_run


def test_plot_draws_each_finished_stage_beside_its_reference(tmp_path):
    run = make_run(tmp_path / "run", stages=("ensemble", "baseline", "conv2_relu"), save_models=False)
    summary = json.loads((run / "summary.json").read_text())
    out = tmp_path / "docs" / "progression.png"

    rows = write_plot(run, out)

    stages = summary["stages"]
    assert [row[0] for row in rows] == ["baseline", "conv2_relu", "ensemble"]  # the progression's order
    for stage_id, test, reference in rows:
        assert test == 100 * stages[stage_id]["test_accuracy"]
        assert reference == 100 * stages[stage_id]["reference_accuracy"]
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 600 and picture.height > 300
        pixels = np.asarray(picture.convert("RGB"))
    assert (np.abs(pixels.astype(int) - [31, 119, 180]).sum(axis=2) < 30).sum() > 200  # the run's blue line
    assert not list(out.parent.glob(".*.tmp"))


def test_plot_leaves_out_stages_not_done(tmp_path):
    run = make_run(tmp_path / "run", stages=("baseline", "conv1"), save_models=False)
    summary = json.loads((run / "summary.json").read_text())
    summary["stages"]["conv1"]["status"] = "out of date"

    assert [row[0] for row in progression(summary)] == ["baseline"]


def test_plot_refuses_a_directory_without_a_summary_in_one_sentence(tmp_path):
    out = tmp_path / "progression.png"
    result = subprocess.run([*module_command("pipeline.plot"), str(tmp_path), "--out", str(out)],
                            capture_output=True, text=True)

    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path} has no summary.json; is it a run directory?"
    assert not out.exists()
