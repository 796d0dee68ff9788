"""A multi-worker run survives a restart: two workers on 127.0.0.1 share one --run-dir (standing for shared
storage), both are killed with SIGKILL in the middle of a stage and started again with the same commands.

They must agree on what is done (the first stage, skipped by both) and where to resume (both after the
chief's last checkpointed epoch), both exit 0, and the chief's final weights equal those of an uninterrupted
two-worker run. The killed stage is the dropout network, so the resumed random state (each replica's own
dropout masks) counts too. Quick settings: 320 training images, 10 steps an epoch, a few seconds a stage.
"""
import json
import os
import re
import sys
from pathlib import Path

import pytest

from mnist_cnn_progression.pipeline.rundir import run_lock
from mnist_cnn_progression.pipeline.errors import PipelineError
from conftest import free_ports
from pipeline_runs import ROOT, assert_same_weights, finish, killed_after_checkpoint, start_workers

pytestmark = pytest.mark.slow  # every test here starts a cluster of worker processes

STAGES = ["baseline", "dropout"]
EPOCHS = 4
SETTINGS = ["train_limit=320", "batch_size=32", "steps_per_call=5", f"epochs={EPOCHS}", "epochs.baseline=1"]


def start(run_dir: Path | list, ports: list[int], logs: Path, stages=STAGES):
    """Both workers of one run, each with the same command line (unless given two run directories) and its TF_CONFIG."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    commands = []
    for directory in run_dir if isinstance(run_dir, list) else [run_dir] * 2:
        command = [sys.executable, str(ROOT / "run_pipeline.py"), "--preset", "quick", "--data", "sample",
                   "--run-dir", str(directory), "--stages", ",".join(stages)]
        for setting in SETTINGS:
            command += ["--set", setting]
        commands.append(command)
    return start_workers(commands, [{"cluster": cluster, "task": {"type": "worker", "index": index}}
                                    for index in range(2)], logs)


def test_two_workers_killed_mid_stage_resume_together_to_the_weights_of_an_uninterrupted_run(tmp_path):
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    # The uninterrupted reference needs only the stage that is killed (its fingerprint ignores the others).
    finish(start(whole_dir, free_ports(2), tmp_path / "whole", stages=["dropout"]), tmp_path / "whole")

    ports = free_ports(2)  # the restart uses the very same commands, ports included
    killed_after = killed_after_checkpoint(start(killed_dir, ports, tmp_path / "first"), killed_dir, "dropout")
    assert 2 <= killed_after < EPOCHS
    assert (killed_dir / "stages" / "baseline").exists() and not (killed_dir / "stages" / "dropout").exists()

    outputs = finish(start(killed_dir, ports, tmp_path / "second"), tmp_path / "second")
    for output in outputs:  # both skip the finished stage and resume after the chief's last checkpointed epoch
        assert re.search(r"\[baseline\] done .*skipped", output), output[-3000:]
        assert re.findall(r"resuming after epoch (\d+)", output) == [str(killed_after)], output[-3000:]
        assert f"epoch {killed_after + 1:3d}/{EPOCHS}" in output and f"epoch {killed_after:3d}/{EPOCHS}" not in output

    assert_same_weights(whole_dir, killed_dir, "dropout", arrays=10)  # five layers, kernel and bias each
    summary = json.loads((killed_dir / "summary.json").read_text())["stages"]["dropout"]
    assert summary["resumed_from_epoch"] == killed_after
    history, reference = ([line.split(",")[:3] for line in (d / "stages" / "dropout" / "history.csv").read_text()
                           .splitlines()] for d in (killed_dir, whole_dir))
    assert len(history) == 1 + EPOCHS and history == reference  # epoch, loss and validation accuracy, every epoch
    # Only the chief wrote the run; the other worker kept only its lock, under workers/worker-1/.
    assert (killed_dir / "workers" / "worker-1" / ".lock").exists()
    assert not list((killed_dir / "checkpoints").iterdir())


def test_workers_that_do_not_share_the_run_directory_stop_with_a_plain_error(tmp_path):
    """The other worker cannot see the chief's data or checkpoints: both stop at the first stage, and say why."""
    logs = tmp_path / "apart"
    outputs = finish(start([tmp_path / "a", tmp_path / "b"], free_ports(2), logs, stages=["baseline"]), logs, code=2)
    for output in outputs:
        assert "error: the workers differ in the settings or data of stage baseline, or do not all see the run " \
               "directory" in output and "Traceback" not in output
    assert not (tmp_path / "b" / "stages").exists() and not (tmp_path / "a" / "stages").exists()


def test_the_run_lock_is_per_task(tmp_path):
    """The chief and another worker share the run directory; no task runs twice."""
    with run_lock(tmp_path), run_lock(tmp_path, "worker-1"), run_lock(tmp_path, "worker-2"):
        assert (tmp_path / "workers" / "worker-1" / ".lock").read_text() == f"pid {os.getpid()}"
        with pytest.raises(PipelineError, match=r"worker-1 of .* is in use by another run \(pid \d+\)"):
            with run_lock(tmp_path, "worker-1"):
                pass
        with pytest.raises(PipelineError, match="is in use by another run"):
            with run_lock(tmp_path):
                pass


def test_two_workers_train_a_chained_ensemble_one_member_after_another(tmp_path):
    """Every worker starts each chained member from its own copy of the one before: the two finish in step."""
    finish(start(tmp_path / "run", free_ports(2), tmp_path / "ensemble", stages=["ensemble"]), tmp_path / "ensemble")
    entry = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]["ensemble"]
    assert entry["chain_epochs"] == 1 and entry["members_at_once"] == 1
    assert [member["epochs"] for member in entry["members"]] == [EPOCHS, 1, 1, 1, 1]
    assert (tmp_path / "run" / "bundle" / "ensemble.onnx").exists()
