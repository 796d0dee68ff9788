"""The runner and CLI: skipping what is done, refusing a second run, clear errors, nothing half-written."""
import contextlib
import dataclasses
import fcntl
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn_progression.pipeline import cli
from mnist_cnn_progression.pipeline import config
from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.runner import Runner, plan
from mnist_cnn_progression.pipeline.sources import SAMPLE_WARNING
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID, STAGES
from conftest import module_command
from tests.report_fixtures import markdown_table
from tests.test_sources import SHARED_MNIST, make_mirror, needs_mnist

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("as_url", [False, True])
def test_download_and_expand_full_mnist_then_skip(capsys, tmp_path, as_url):
    data = SHARED_MNIST.as_uri() if as_url else str(SHARED_MNIST)
    args = ["--stages", "download,expand", "--data", data, "--run-dir", str(tmp_path)]
    code, out, _ = run(capsys, *args)
    assert code == 0, out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [summary["data"][k] for k in ("train", "validation", "test", "expanded_train")] == [
        50_000, 10_000, 10_000, 250_000]
    assert summary["data"]["sample"] is False and len(summary["data"]["digest"]) == 64
    assert summary["environment"]["tensorflow"] and "numpy" in summary["environment"]
    assert len(list((tmp_path / "expanded").glob("images_*.npy"))) == 5
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "[download] done already" in out and "[expand] done already" in out


def test_naming_a_stage_plans_what_it_needs():
    assert plan(["expanded"]) == ["download", "expand", "expanded"]
    assert plan(["ensemble"]) == ["download", "expand", "dropout", "ensemble"]
    assert plan(["beyond"]) == ["download", "beyond"]
    assert plan(["report"]) == ["report"]
    with pytest.raises(PipelineError, match="Unknown step or stage nope"):
        plan(["nope"])


def test_a_stages_wiring_is_not_part_of_its_recipe_fingerprint():
    """Where member 0 and the bundle come from changes no network: a finished run must not retrain for it."""
    ensemble = STAGE_BY_ID["ensemble"]
    assert dataclasses.replace(ensemble, member_zero_from="", run_bundle=False).recipe() == ensemble.recipe()
    assert dataclasses.replace(ensemble, epochs=41).recipe() != ensemble.recipe()


# Recorded from the fingerprints of the code before Stage.recipe (runner._stage_fingerprint over repr(stage)).
RECORDED_FINGERPRINTS = json.loads((REPO / "tests" / "recorded_fingerprints.json").read_text())
RECORDED_DATA = {"full": {"train": 50_000, "digest": "0" * 64}, "sample": {"train": 4_000, "digest": "1" * 64}}


def stage_fingerprints(run_dir: Path, preset: str, data: dict, overrides=("precision=float32",)) -> dict:
    """Every stage's fingerprint in a run directory holding only `data`'s data.json and an expand fingerprint."""
    from mnist_cnn_progression.pipeline.runner import Runner
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    (run_dir / "data" / "data.json").write_text(json.dumps(data))
    (run_dir / "manifest.json").write_text(json.dumps({"expand": {"fingerprint": "e" * 64}}))
    runner = Runner(run_dir, preset, config.resolve(preset, list(overrides)), "auto")
    return {stage.id: runner.recipe(stage).fingerprint() for stage in STAGES}


@pytest.mark.parametrize("data", RECORDED_DATA)
@pytest.mark.parametrize("preset", config.PRESETS)
def test_every_stage_keeps_the_fingerprint_it_had_so_no_finished_run_retrains(tmp_path, preset, data):
    """Every run before the precision setting trained in float32: in float32 each stage keeps its fingerprint."""
    fingerprints = stage_fingerprints(tmp_path, preset, RECORDED_DATA[data])
    assert fingerprints == {stage.id: RECORDED_FINGERPRINTS[f"{data} {preset} {stage.id}"] for stage in STAGES}


def test_chaining_the_members_changes_the_ensembles_fingerprint_and_no_other(tmp_path):
    """chain_epochs changes how the ensemble's members start: a finished run retrains that stage and no other."""
    def fingerprints(*overrides):
        every = stage_fingerprints(tmp_path, "fast", RECORDED_DATA["full"], ("precision=float32", *overrides))
        return {stage: every[stage] for stage in ("dropout", "ensemble", "beyond")}

    chained, independent = fingerprints(), fingerprints("chain_epochs.ensemble=0")
    assert chained["ensemble"] != independent["ensemble"]
    assert chained["dropout"] == independent["dropout"] and chained["beyond"] == independent["beyond"]
    assert fingerprints("chain_epochs.dropout=2") == chained  # one network: nothing to chain


def test_a_second_concurrent_run_is_refused(capsys, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242")
        held.flush()
        code, out, err = run(capsys, "--stages", "download", "--data", "sample", "--run-dir", str(tmp_path))
    assert code == 2
    assert "is in use by another run (pid 4242)" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()
    code, _, _ = run(capsys, "--stages", "download", "--data", "sample", "--run-dir", str(tmp_path))
    assert code == 0  # the lock went with its holder


def test_an_interrupted_step_leaves_nothing_taken_for_finished(capsys, tmp_path, monkeypatch):
    assert run(capsys, "--stages", "download", "--data", "sample", "--run-dir", str(tmp_path))[0] == 0
    real_save = np.save

    def dying_save(path, array):  # the process "dies" between the images and the labels of a shard
        if "labels_" in str(path):
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(np, "save", dying_save)
    code, _, err = run(capsys, "--stages", "expand", "--run-dir", str(tmp_path))
    assert code == 130 and "resumes" in err
    assert not (tmp_path / "expanded").exists()
    assert "expand" not in json.loads((tmp_path / "manifest.json").read_text())
    monkeypatch.setattr(np, "save", real_save)
    leftover = tmp_path / ".unfinished-expanded-killed"  # what a SIGKILL would leave behind
    leftover.mkdir()
    (leftover / "images_000.npy").write_bytes(b"half")
    code, out, _ = run(capsys, "--stages", "expand", "--run-dir", str(tmp_path))
    assert code == 0 and "20000 training images" in out
    assert not leftover.exists()


@pytest.mark.parametrize("source, message", [
    ("http://127.0.0.1:9/", "Could not fetch http://127.0.0.1:9/"),
    ("/no/such/place", "--data /no/such/place: no such directory."),
])
def test_a_bad_source_is_one_sentence_and_a_nonzero_exit(capsys, tmp_path, source, message):
    code, _, err = run(capsys, "--stages", "download", "--data", source, "--run-dir", str(tmp_path / "r"))
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_file_is_named(capsys, tmp_path):
    make_mirror(tmp_path / "m", sums=False)
    raw = (tmp_path / "m" / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "m" / "train-images-idx3-ubyte.gz").write_bytes(raw[:100])
    code, _, err = run(capsys, "--stages", "download", "--data", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "train-images-idx3-ubyte.gz is not a readable gzip file" in err


def test_set_overrides_are_typed():
    settings = config.resolve("fast", ["batch_size=32", "epochs.conv1=3", "shuffle=false", "learning_rate=1e-3"])
    assert settings["batch_size"] == 32 and settings["shuffle"] is False and settings["learning_rate"] == 0.001
    assert config.for_stage(settings, "epochs", "conv1") == 3
    assert config.for_stage(settings, "epochs", "baseline") == config.PRESETS["fast"]["epochs"]["baseline"]
    assert config.for_stage(config.resolve("fast", ["epochs=2"]), "epochs", "dropout") == 2
    with pytest.raises(PipelineError, match="expected a int, not 'big'"):
        config.resolve("fast", ["batch_size=big"])
    with pytest.raises(PipelineError, match="key one of"):
        config.resolve("fast", ["colour=red"])
    with pytest.raises(PipelineError, match="there is no stage 'conv9'"):
        config.resolve("fast", ["epochs.conv9=3"])


FAIL_FAST = ("import sys; from mnist_cnn_progression.pipeline import cli; sys.modules['tensorflow'] = None; "
             "sys.exit(cli.main(sys.argv[1:]))")


@pytest.mark.parametrize("arguments, message", [
    (["--data", "/no/such/place"], "error: --data /no/such/place: no such directory."),
    (["--data", "run_pipeline.py"], "error: --data run_pipeline.py: not a directory; give the directory that "
                                    "holds the four IDX files."),
    (["--data", "ftp://example.org/mnist"], "error: --data ftp://example.org/mnist: unknown URL scheme 'ftp'; "
                                             "use https://, http:// or file://."),
    (["--stages", "conv1,conv9"], "error: Unknown step or stage conv9: choose from"),
    (["--set", "epochs.conv9=3"], "error: --set 'epochs.conv9=3': there is no stage 'conv9'"),
    (["--set", "batch_size=big"], "error: --set 'batch_size=big': expected a int, not 'big'."),
    (["--set", "init.dropout=glorot"], "error: --set 'init.dropout=glorot': init is one of reference, he."),
    (["--set", "precision=half"], "error: --set 'precision=half': precision is one of auto, float32, mixed_bfloat16, "
                                  "mixed_float16."),
    (["--set", "chain_epochs.ensemble=-1"], "error: --set 'chain_epochs.ensemble=-1': chain_epochs is a whole number "
                                            "of 0 or more."),
    (["--push-to", "run_pipeline.py"], "error: --push-to run_pipeline.py is not a base directory of versions"),
])
def test_a_mistake_fails_before_tensorflow_loads_and_leaves_nothing_behind(tmp_path, arguments, message):
    """TensorFlow is made unimportable: a check that reached it would fail with an ImportError instead."""
    result = subprocess.run([sys.executable, "-c", FAIL_FAST, "--run-dir", str(tmp_path / "run"), *arguments],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments, hint", [
    (["--stages", "conv_relu"], "conv2_relu"), (["--set", "epoch=2"], "epochs"),
    (["--set", "epochs.dropuot=8"], "dropout"), (["--set", "optimizer=adamm"], "adam"),
])
def test_a_typo_gets_the_choices_and_the_closest_one(tmp_path, arguments, hint):
    result = subprocess.run([sys.executable, "-c", FAIL_FAST, "--run-dir", str(tmp_path / "run"), *arguments],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    choices, _, guess = result.stderr.strip().partition(" Did you mean ")
    assert re.search(rf"\b{hint}\b", choices) and choices.endswith(".") and guess == f"{hint}?"


def test_a_name_that_resembles_no_choice_gets_no_guess():
    with pytest.raises(PipelineError) as raised:
        plan(["conv1", "xyz"])
    message = str(raised.value)
    assert message.startswith("Unknown step or stage xyz: choose from") and "Did you mean" not in message


VOTE, MEMBERS = 0.9762, (0.9794, 0.9770, 0.9701, 0.9688, 0.9650)  # a quick run's vote, below its best member


def canned_stage(runner, stage_recipe, output) -> dict:
    """What a stage hands the runner, without its training: a network at 98%, or a vote below its best member."""
    stage = stage_recipe.stage
    entry = {"network": stage.network.describe(), "data": stage.data, "epochs": 1, "best_epoch": 1,
             "val_accuracy": 0.98, "test_accuracy": 0.98, "reference_accuracy": stage.reference}
    if stage.members > 1:
        entry.update(best_epoch=None, test_accuracy=VOTE, members=[
            {"seed": 1000 * k, "epochs": 1, "best_epoch": 1, "val_accuracy": 0.98, "test_accuracy": accuracy}
            for k, accuracy in enumerate(MEMBERS)])
    return entry


@pytest.fixture(scope="module")
def untrained_quick_run(tmp_path_factory):
    """The command with the quick preset on the sample, train_limit 1,000, and every stage's training replaced
    by canned_stage: (run directory, its log). The log, summary.json and report are the command's own."""
    run_dir = tmp_path_factory.mktemp("untrained_quick_run")
    log = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        patch.setattr(Runner, "_execute", canned_stage)
        code = cli.main(["--preset", "quick", "--data", "sample", "--set", "train_limit=1000", "--run-dir",
                         str(run_dir), "--stages", "conv1,ensemble,report"])
    assert code == 0, log.getvalue()
    return run_dir, log.getvalue()


def test_each_stage_says_what_it_trains_on_when_train_limit_cuts_its_set(untrained_quick_run):
    """The sample's 4,000 training images, 20,000 expanded: the quick preset's train_limit (here 1,000) cuts both."""
    run_dir, log = untrained_quick_run
    assert "[conv1] conv20-fc100-softmax (sigmoid) on the first 1,000 of 4,000 train images (train_limit 1000)" in log
    assert "[dropout] conv20-conv40-fc1000-fc1000-softmax (relu, dropout 0.5) on the first 1,000 of 20,000 " \
           "expanded images (train_limit 1000)" in log
    stages = json.loads((run_dir / "summary.json").read_text())["stages"]
    assert [(stages[i]["images_per_epoch"], stages[i]["training_set_images"]) for i in ("conv1", "dropout")] == [
        (1000, 4000), (1000, 20_000)]
    rows = markdown_table((run_dir / "report" / "report.md").read_text(), "## Stages")
    assert {row["Stage"]: row["Data"] for row in rows} == {
        "conv1": "train, first 1,000 of 4,000", "dropout": "expanded, first 1,000 of 20,000",
        "ensemble": "expanded, first 1,000 of 20,000"}


def test_a_vote_below_its_best_member_is_warned_of_as_a_stage_that_did_not_learn(untrained_quick_run):
    run_dir, log = untrained_quick_run
    said = "the vote's test accuracy 97.62% is below that of its best member, 97.94% (seed 0)"
    assert f"WARNING: [ensemble] {said}" in log
    assert json.loads((run_dir / "summary.json").read_text())["stages"]["ensemble"]["warning"].startswith(said)
    report = (run_dir / "report" / "report.md").read_text()
    assert f"> **⚠ Stage ensemble: {said}" in report and "Left out of the combined chart" not in report
    assert "Stage conv1:" not in report and "Stage dropout:" not in report


def test_the_sample_warning_is_said_again_in_the_last_line(untrained_quick_run):
    """Said once at the top of a long log, the sample's warning ends it too."""
    _, log = untrained_quick_run
    last = log.strip().splitlines()[-1]
    assert last.startswith("done in ") and last.endswith(f"; WARNING: {SAMPLE_WARNING}")
    assert log.count(SAMPLE_WARNING) == 2


# One epoch of 640 images everywhere, but 150 updates for the dropout network and the ensemble's members.
TINY = ["--preset", "quick", "--set", "train_limit=640", "--set", "epochs=1", "--set", "batch_size=64",
        "--set", "min_steps.dropout=150", "--set", "min_steps.ensemble=150"]
SMALL = [*TINY, "--data", "sample"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The whole pipeline on the sample, small: (run directory, its log)."""
    run_dir = tmp_path_factory.mktemp("sample_run")
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = cli.main([*SMALL, "--run-dir", str(run_dir)])
    assert code == 0, log.getvalue()
    return run_dir, log.getvalue()


@pytest.mark.slow
def test_every_stage_end_to_end_on_small_data_then_a_changed_setting_redoes_only_its_stage(capsys, sample_run,
                                                                                            tmp_path):
    """The whole pipeline on the sample: training, evaluation, export, ensemble bundle and report."""
    shutil.copytree(sample_run[0], tmp_path, dirs_exist_ok=True)
    small = [*SMALL, "--run-dir", str(tmp_path)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"]["sample"] is True and summary["data"]["warning"]
    assert summary["environment"]["device"] == "CPU" and "1 replica" in summary["environment"]["strategy"]
    for stage in ["baseline", "conv1", "conv2", "conv2_relu", "expanded", "extra_fc", "dropout", "ensemble"]:
        entry = summary["stages"][stage]
        assert entry["status"] == "done"
        assert 0 <= entry["test_accuracy"] <= 1 and entry["reference_accuracy"] > 0.97
        assert entry["evaluation"]["accuracy"] == pytest.approx(entry["test_accuracy"])
        assert entry["export"]["parity_max_abs_diff"] <= 1e-5
    assert len(summary["stages"]["ensemble"]["members"]) == 5
    seeds = {member["seed"] for member in summary["stages"]["ensemble"]["members"]}
    assert len(seeds) == 5 and not seeds & {seed + 1 for seed in seeds}  # a run with --set seed=1 shares no network
    # Member 0 is the dropout stage's network (the same recipe): trained once, its images count there.
    assert "member 0 is the dropout stage's network" in sample_run[1]
    members = summary["stages"]["ensemble"]["members"]
    assert summary["stages"]["ensemble"]["chain_epochs"] == 1 and members[1]["epochs"] == members[0]["epochs"] > 1
    assert (f"training member(s) 1, 2, 3, 4 of 5, each training {members[1]['epochs']} epoch(s) on from the one "
            f"before it") in sample_run[1]  # chain_epochs 1, raised by min_steps as the dropout stage's epochs are
    assert summary["stages"]["ensemble"]["trained_images"] == 4 * summary["stages"]["dropout"]["trained_images"]
    # Real digits: the networks that got 150 updates learn; the sigmoid ones that got 10 sit at chance, flagged.
    ensemble = summary["stages"]["ensemble"]
    assert ensemble["test_accuracy"] > 0.7  # and warned of only when its vote is below its best member
    assert bool(ensemble["warning"]) == (ensemble["test_accuracy"] < max(m["test_accuracy"] for m in members))
    assert "near chance" in summary["stages"]["conv2"]["warning"]
    assert "[conv1] conv20-fc100-softmax (sigmoid) on the first 640 of 4,000 train images (train_limit 640)" \
        in sample_run[1] and summary["stages"]["conv1"]["images_per_epoch"] == 640
    assert (tmp_path / "stages" / "conv1" / "model.keras").exists()
    assert (tmp_path / summary["stages"]["conv1"]["export"]["onnx"]).exists()
    assert (tmp_path / "bundle" / "ensemble.onnx").exists() and (tmp_path / "report" / "report.html").exists()
    assert not list((tmp_path / "checkpoints").iterdir())

    code, out, _ = run(capsys, *small, "--set", "learning_rate.conv1=0.01", "--stages", "baseline,conv1")
    assert code == 0
    assert "[baseline] done already" in out and "[conv1] conv20-fc100-softmax" in out


@pytest.mark.slow
def test_push_to_sends_the_finished_run_through_the_gate(capsys, sample_run, tmp_path):
    """--push-to after a finished run: nothing retrains, the bundle is scored on the run's own test set and pushed
    with its run's provenance; the same run again is refused by the default floor, with exit 3."""
    run_dir, base = tmp_path / "run", tmp_path / "base"
    shutil.copytree(sample_run[0], run_dir)
    code, out, err = run(capsys, *SMALL, "--run-dir", str(run_dir), "--push-to", str(base),
                         "--push-min-accuracy", "50")
    assert code == 0, err
    assert "[ensemble] done already" in out and f"Version 1 pushed to {base}:" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    release = json.loads((base / "1" / "release.json").read_text())
    assert release["accuracy"]["float32"] == pytest.approx(summary["stages"]["ensemble"]["bundle"]["test_accuracy"]
                                                           ["float32"])
    assert release["test_digest"] == summary["data"]["test_digest"] and release["sample"] is True
    assert release["preset"] == "quick" and release["commit"] == summary["environment"]["git_commit"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert release["fingerprints"] == {"ensemble": manifest["ensemble"]["fingerprint"]}
    code, _, err = run(capsys, *SMALL, "--run-dir", str(run_dir), "--push-to", str(base))
    assert code == 3 and err.startswith("refused: The candidate scores ") and "under the floor of 99.67%" in err
    assert sorted(path.name for path in base.iterdir()) == [".push.lock", "1"]


@pytest.mark.slow
@needs_mnist
def test_new_data_marks_what_was_trained_on_the_old_out_of_date_and_never_mixes_them(capsys, sample_run, tmp_path):
    shutil.copytree(sample_run[0], tmp_path, dirs_exist_ok=True)
    predict = [*module_command("inference.predict"), "--models", str(tmp_path), str(tmp_path / "data")]
    warned = subprocess.run(predict, capture_output=True, text=True, cwd=REPO).stderr
    assert "warning: These networks were trained on the 5,000-digit sample" in warned

    code, out, _ = run(capsys, "--data", str(SHARED_MNIST), "--run-dir", str(tmp_path), "--stages", "download,report")
    assert code == 0 and "[download] the data changed: baseline, conv1," in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"]["sample"] is False
    assert {entry["status"] for entry in summary["stages"].values()} == {"out of date"}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Not in this run: baseline (out of date), conv1 (out of date)" in report and "## Deploy" in report
    assert "Deploy skipped" in report
    warned = subprocess.run(predict, capture_output=True, text=True, cwd=REPO).stderr
    assert "warning: This bundle is out of date" in warned

    code, out, _ = run(capsys, *TINY, "--data", str(SHARED_MNIST), "--run-dir", str(tmp_path), "--stages", "baseline")
    assert code == 0 and "[baseline] out of date (trained on the data of sample, not the data now in data/): " \
                         "retraining" in out
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert stages["baseline"]["status"] == "done" and stages["conv1"]["status"] == "out of date"


@pytest.mark.parametrize("train_images, epochs, dropout_epochs, chained_epochs", [(4000, 65, 13, 13),
                                                                                  (50_000, 15, 6, 2)])
def test_the_fast_preset_gives_every_network_enough_updates_to_leave_chance(tmp_path, train_images, epochs,
                                                                            dropout_epochs, chained_epochs):
    """On the sample (31 batches an epoch) conv2 gets 65 epochs, 2,000 updates; on full MNIST its own 15."""
    from mnist_cnn_progression.pipeline.runner import Runner
    from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.json").write_text(json.dumps({"train": train_images, "digest": "0" * 64}))
    runner = Runner(tmp_path, "fast", config.resolve("fast", ["precision=float32"]), "auto")
    settings = lambda stage: runner.recipe(STAGE_BY_ID[stage]).settings
    assert settings("conv2")[0].epochs == epochs
    assert settings("dropout")[0].epochs == dropout_epochs  # on 5x the images
    assert settings("ensemble")[0].epochs == dropout_epochs  # member 0 is dropout's network
    assert [settings("ensemble")[k].epochs for k in (1, 4)] == [chained_epochs] * 2


@pytest.mark.slow
def test_the_command_log_is_quiet_and_follows_the_whole_run(tmp_path):
    """The real command: none of TensorFlow's start-up noise or retracing warnings; a line per stage of the run."""
    from mnist_cnn_progression.pipeline.native_log import NOISE
    result = subprocess.run([sys.executable, "run_pipeline.py", *SMALL, "--run-dir", str(tmp_path),
                             "--set", "min_steps.dropout=40", "--set", "min_steps.ensemble=40",
                             "--stages", "dropout,ensemble"], capture_output=True, text=True, cwd=REPO)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    for noise in [marker.decode() for marker in NOISE] + ["retracing", "Traceback", "best epoch None"]:
        assert noise not in log
    assert log.count("Trained on the 5,000-digit sample") == 2  # at the top, and again in the last line
    assert "[run] stage 1 of 2 (dropout); " in log and "time left known after the first stage" in log
    assert re.search(r"\[run\] stage 2 of 2 \(ensemble\); \d+ s so far, ~\d+(\.\d)? (s|min) left", log), log
    assert re.search(r"\[ensemble\] test accuracy 0\.\d{4} \(reference 0\.9967, members' best epochs( \d+,){4} \d+\)",
                     log), log
