"""The run report against a small fake run: real PNGs, the summary's numbers, the vote's errors."""
import base64
import hashlib
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from mnist_cnn_progression.inference.vote import vote
from mnist_cnn_progression.pipeline.report import GALLERY_LIMIT, write_report
from tests.report_fixtures import make_run, markdown_table


def file_hashes(run_dir):
    """sha256 of every file of the run except the report's own."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and "report" not in p.relative_to(run_dir).parts}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A run with baseline, conv1, conv2_relu and the ensemble; its hashes before the report."""
    run_dir = make_run(tmp_path_factory.mktemp("full"))
    before = file_hashes(run_dir)
    return run_dir, write_report(run_dir), before


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """A baseline-only run on sample data with a non-reference preset."""
    run_dir = make_run(tmp_path_factory.mktemp("partial"), stages=("baseline",), preset="quick", sample=True)
    return run_dir, write_report(run_dir)


def seconds(wall_time: str) -> int:
    hours, minutes, secs = map(int, wall_time.split(":"))
    return hours * 3600 + minutes * 60 + secs


def test_report_files_exist(full):
    run_dir, info, _ = full
    for name in ("report.md", "report.html", "gallery.json", *info["images"]):
        assert (run_dir / "report" / name).is_file(), name
    assert not info["skipped"]


def test_every_picture_is_a_real_nonblank_png(full):
    run_dir, info, _ = full
    pngs = sorted((run_dir / "report").glob("*.png"))
    assert sorted(p.name for p in pngs) == sorted(info["images"])
    assert {"val_accuracy.png", "filters.png", "misclassified.png", "confusion.png",
            "curves_conv2_relu.png", "curves_ensemble.png"} <= set(info["images"])
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG"
            assert image.width >= 400 and image.height >= 100, png.name
            assert np.asarray(image.convert("L")).std() > 5, f"{png.name} is blank"


def test_every_number_in_the_stage_table_equals_the_summary(full):
    run_dir, _, _ = full
    stages = json.loads((run_dir / "summary.json").read_text())["stages"]
    rows = markdown_table((run_dir / "report" / "report.md").read_text(), "## Stages")
    assert [row["Stage"] for row in rows] == ["baseline", "conv1", "conv2_relu", "ensemble"]
    for row in rows:
        stage = stages[row["Stage"]]
        assert row["Network"] == stage["network"] and row["Data"] == f"{stage['data']}, {stage['training_set_images']}"
        best = [m["best_epoch"] for m in stage["members"]] if "members" in stage else [stage["best_epoch"]]
        chain = f", then {stage['chain_epochs']} a member" if stage.get("chain_epochs") else ""
        assert row["Epochs"] == f"{stage['epochs']}{chain}" and list(map(int, row["Best epoch"].split(", "))) == best
        for column, key in [("Validation %", "val_accuracy"), ("Test %", "test_accuracy"),
                            ("Reference %", "reference_accuracy")]:
            assert re.fullmatch(r"\d+\.\d\d", row[column])
            assert float(row[column]) == pytest.approx(100 * stage[key], abs=0.005)
        assert float(row["Difference (pp)"]) == pytest.approx(stage["evaluation"]["difference_pp"], abs=0.005)
        assert seconds(row["Wall time"]) == pytest.approx(stage["wall_seconds"], abs=0.5)


def test_gallery_shows_exactly_the_ensembles_errors(full):
    run_dir, info, _ = full
    labels = np.load(run_dir / "data" / "test_labels.npy")
    classes = vote(np.load(run_dir / "stages" / "ensemble" / "member_probabilities.npy"))[0]
    wrong = np.flatnonzero(classes != labels).tolist()
    gallery = json.loads((run_dir / "report" / "gallery.json").read_text())
    assert wrong and gallery["stage"] == info["gallery_stage"] == "ensemble"
    assert gallery["misclassified"] == wrong and gallery["shown"] == wrong[:GALLERY_LIMIT]
    assert gallery["true"] == labels[gallery["shown"]].tolist()
    assert gallery["predicted"] == classes[gallery["shown"]].tolist()
    assert f"gets {len(wrong)} of {len(labels)} test digits wrong" in (run_dir / "report" / "report.md").read_text()


def test_filters_come_from_the_preferred_stage(full):
    assert full[1]["filters_stage"] == "conv2_relu"


def test_html_is_self_contained(full):
    run_dir, info, _ = full
    page = (run_dir / "report" / "report.html").read_text()
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert len(sources) == len(info["images"])
    for source in sources:
        assert source.startswith("data:image/png;base64,")
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {(run_dir / "report" / name).read_bytes() for name in info["images"]}
    for outside in ("http:", "https:", "<link", "<script", "url(", "@import", "file:"):
        assert outside not in page
    assert "<table>" in page and "conv2_relu" in page


def test_regenerating_is_quick_and_changes_no_model_or_metric(full):
    run_dir, _, before = full
    start = time.monotonic()
    write_report(run_dir)
    assert time.monotonic() - start < 30
    assert file_hashes(run_dir) == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["data", "report", "stages", "summary.json"]


def test_reference_run_has_no_banner(full):
    assert "⚠" not in (full[0] / "report" / "report.md").read_text()


def test_sample_data_and_preset_banners_each_once(partial):
    run_dir, _ = partial
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "> **⚠ only 5,000 digits**" in markdown and "> **⚠ Preset 'quick'" in markdown
    assert markdown.count("only 5,000 digits") == 1
    assert (run_dir / "report" / "report.html").read_text().count('class="banner"') == 2


def test_a_stage_at_chance_is_called_out_and_left_out_of_the_combined_chart(tmp_path):
    run_dir = make_run(tmp_path, stages=("baseline", "conv1", "conv2"), save_models=False, failed=("conv2",))
    info = write_report(run_dir)
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "> **⚠ Stage conv2: test accuracy near chance: the network did not learn.**" in markdown
    assert info["combined_chart"] == ["baseline", "conv1"]
    assert "Left out of the combined chart, which they would squash: conv2" in markdown
    assert "curves_conv2.png" in info["images"]


def test_the_data_column_says_how_much_of_its_set_each_stage_trained_on_under_train_limit(tmp_path):
    """train_limit 40 cuts the expanded set (150 images here) but not the train split (30)."""
    run_dir = make_run(tmp_path, stages=("baseline", "expanded"), save_models=False, train_limit=40)
    write_report(run_dir)
    rows = markdown_table((run_dir / "report" / "report.md").read_text(), "## Stages")
    assert [row["Data"] for row in rows] == ["train, 30", "expanded, first 40 of 150"]


def test_deploy_section_and_settings_table(full):
    run_dir, _, _ = full
    markdown = (run_dir / "report" / "report.md").read_text()
    bundle = json.loads((run_dir / "summary.json").read_text())["stages"]["ensemble"]["bundle"]["test_accuracy"]
    deploy = markdown.split("## Deploy", 1)[1].split("##", 1)[0]
    assert f"{100 * bundle['float32']:.2f} % in float32 and {100 * bundle['int8']:.2f} % in int8" in deploy
    assert f"mnist-predict --models {run_dir}" in deploy and f"mnist-serve --models {run_dir}" in deploy
    assert markdown_table(markdown, "## Settings") == [{"Setting": "epochs", "Value": "4"},
                                                       {"Setting": "batch_size", "Value": "10"}]


def test_missing_stages_are_named_and_their_parts_skipped(partial):
    run_dir, info = partial
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "Not in this run: conv1, conv2, conv2_relu, expanded, extra_fc, dropout, ensemble." in markdown
    assert info["filters_stage"] is None and any(s.startswith("Filters") for s in info["skipped"])
    assert [row["Stage"] for row in markdown_table(markdown, "## Stages")] == ["baseline"]
    # Without an ensemble the gallery shows the last stage's errors, and says so.
    labels = np.load(run_dir / "data" / "test_labels.npy")
    predicted = np.load(run_dir / "stages" / "baseline" / "test_probabilities.npy").argmax(axis=1)
    gallery = json.loads((run_dir / "report" / "gallery.json").read_text())
    assert gallery["stage"] == "baseline" and gallery["misclassified"] == np.flatnonzero(predicted != labels).tolist()
    assert "No ensemble vote in this run: these are the errors of baseline." in markdown


def test_a_stage_beyond_the_seed_gets_its_own_section_vote_figure_and_bundle(tmp_path):
    run_dir = make_run(tmp_path, stages=("baseline", "ensemble", "beyond"), save_models=False)
    info = write_report(run_dir)
    markdown = (run_dir / "report" / "report.md").read_text()
    beyond = json.loads((run_dir / "summary.json").read_text())["stages"]["beyond"]
    assert [row["Stage"] for row in markdown_table(markdown, "## Stages")] == ["baseline", "ensemble"]
    [row] = markdown_table(markdown, "## Beyond the seed")
    assert row["Stage"] == "beyond" and float(row["Test %"]) == pytest.approx(100 * beyond["test_accuracy"], abs=0.005)
    assert row["Reference %"] == "99.67"
    section = markdown.split("## Beyond the seed", 1)[1].split("\n## ", 1)[0]
    assert "not part of SEED.md: 3 networks" in section and "published figure is 99.87 %: An et al. 2020" in section
    assert "Beyond members (seed: validation % / test %): 0: " in section
    assert {"vote_beyond.png", "curves_beyond.png"} <= set(info["images"]) and "beyond" not in info["combined_chart"]
    assert info["gallery_stage"] == "ensemble"  # the progression's vote keeps the gallery
    deploy = markdown.split("## Deploy", 1)[1].split("\n## ", 1)[0]
    assert f"mnist-predict --models {run_dir / 'stages' / 'beyond' / 'bundle'} digit.png" in deploy
    assert "holds its 3 networks and their vote" in deploy


def test_what_a_killed_report_or_stage_left_is_removed_and_nothing_else(tmp_path):
    """The report's temporaries (.report-* from before, .unfinished-report-* now) went uncleaned after a kill."""
    from mnist_cnn_progression.pipeline.rundir import clean_unfinished
    for leftover in (".report-k1lled", ".unfinished-report-k1lled", "stages/.unfinished-conv1-k1lled"):
        (tmp_path / leftover).mkdir(parents=True)
    (tmp_path / "report").mkdir()
    clean_unfinished(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["report", "stages"]


def test_a_report_is_written_through_a_temporary_that_leaves_nothing(tmp_path):
    make_run(tmp_path)
    write_report(tmp_path)
    write_report(tmp_path)  # replacing the first
    assert (tmp_path / "report" / "report.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
