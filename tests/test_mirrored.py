"""MirroredStrategy through a whole stage, as `auto` runs it on a machine with two GPUs.

With no GPU here, tests/two_cpu_pipeline.py splits the CPU into two logical devices before TensorFlow starts
and runs the pipeline's command in that process: `--set strategy=mirrored` then trains on two replicas, each
taking half of every global batch, their gradients summed by an all-reduce. The same stage under the default
strategy, on the same data and seed, is the reference. The quick preset on the bundled sample, a few seconds
an epoch; 3,920 training images, so that each epoch's last 80 make no global batch of 128 but more than one
replica's 64 (as full MNIST's 50,000 do at batch 128).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mnist_cnn_progression.inference.contract import INPUT_NAME, as_images
from pipeline_runs import ROOT, assert_same_weights, killed_after_checkpoint

STAGE = "conv2_relu"
EPOCHS = 8


def command(run_dir: Path, strategy: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "tests" / "two_cpu_pipeline.py"), "--preset", "quick", "--data", "sample",
            "--run-dir", str(run_dir), "--stages", STAGE, "--set", f"strategy={strategy}",
            "--set", f"epochs={EPOCHS}", "--set", "train_limit=3920", *extra]


def run(run_dir: Path, strategy: str, *extra: str) -> str:
    done = subprocess.run(command(run_dir, strategy, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def stage_entry(run_dir: Path) -> tuple[dict, dict]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["environment"], summary["stages"][STAGE]


def onnx_accuracy(run_dir: Path, entry: dict, split: str) -> float:
    """The exported ONNX model's accuracy on a split of the run's prepared data (ONNX Runtime, no TensorFlow)."""
    session = ort.InferenceSession(str(run_dir / entry["export"]["onnx"]), providers=["CPUExecutionProvider"])
    images = as_images(np.load(run_dir / "data" / f"{split}_images.npy"))
    probabilities = session.run(None, {INPUT_NAME: images})[0]
    return float((probabilities.argmax(axis=1) == np.load(run_dir / "data" / f"{split}_labels.npy")).mean())


def test_each_replica_ends_every_epoch_on_the_same_global_batch():
    """Two replicas on one input pipeline share each global batch: 3,920 images make 30 batches of 128 an epoch,
    so 60 of 64, not the 61 a pipeline of its own would make (the 61st would open the next epoch)."""
    import tensorflow as tf

    from mnist_cnn_progression.pipeline.inputs import Arrays
    arrays = Arrays(np.zeros((3920, 28, 28), np.uint8), np.zeros(3920, np.int64))
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    epoch = arrays.training(64, 1, 1, shuffle=True, seed=0, input_context=context)
    assert sum(1 for _ in epoch) == 60
    two_workers = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=4)
    assert sum(1 for _ in arrays.training(32, 1, 1, shuffle=True, seed=0, input_context=two_workers)) == 60


@pytest.mark.slow  # four runs of a stage, each a process of its own
def test_a_stage_under_mirrored_strategy_matches_the_default_strategy_and_resumes_exactly(tmp_path):
    run(tmp_path / "default", "default")
    run(tmp_path / "mirrored", "mirrored")
    environment, mirrored = stage_entry(tmp_path / "mirrored")
    assert environment["strategy"] == "MirroredStrategy (2 replica(s))" and environment["device"] == "CPU"
    _, default = stage_entry(tmp_path / "default")
    assert default["test_accuracy"] > 0.85, default  # both learned ...
    assert abs(mirrored["test_accuracy"] - default["test_accuracy"]) <= 0.005  # ... the same, within 0.5 pp

    # Kept the best epoch's weights: the exported model scores the best validation accuracy, and the test
    # accuracy the stage recorded (evaluation and export ran on the model trained under the strategy).
    history = np.loadtxt(tmp_path / "mirrored" / "stages" / STAGE / "history.csv", delimiter=",", skiprows=1)
    assert len(history) == EPOCHS and mirrored["val_accuracy"] == history[:, 2].max()
    assert mirrored["best_epoch"] == max(int(epoch) for epoch, _, accuracy, _ in history
                                         if accuracy == history[:, 2].max())
    validation_images = len(np.load(tmp_path / "mirrored" / "data" / "validation_labels.npy"))
    assert abs(onnx_accuracy(tmp_path / "mirrored", mirrored, "validation") - mirrored["val_accuracy"]) \
        <= 1 / validation_images  # one near tie at most: ONNX Runtime matches Keras within 1e-5 per probability
    assert onnx_accuracy(tmp_path / "mirrored", mirrored, "test") == pytest.approx(mirrored["test_accuracy"],
                                                                                    abs=0.002)
    assert mirrored["export"]["parity_max_abs_diff"] <= 1e-5

    # Stopped (SIGKILL) after a checkpoint and started again with the same command: the weights of the whole run.
    killed_dir = tmp_path / "killed"
    first = subprocess.Popen(command(killed_dir, "mirrored"), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    killed_after = killed_after_checkpoint([first], killed_dir, STAGE)
    assert 2 <= killed_after < EPOCHS and not (killed_dir / "stages" / STAGE).exists()
    output = run(killed_dir, "mirrored")
    assert f"resuming after epoch {killed_after} of {EPOCHS}" in output, output[-3000:]
    assert_same_weights(tmp_path / "mirrored", killed_dir, STAGE, arrays=8)  # four layers, kernel and bias each
    assert stage_entry(killed_dir)[1]["test_accuracy"] == mirrored["test_accuracy"]


@pytest.mark.slow
def test_three_replicas_refuse_a_batch_they_cannot_share_and_train_one_they_can(tmp_path):
    """Three devices: batch 128 gets one sentence naming a batch that splits; 129 trains, the validation batch
    of 1,000 rounded down to 999 (tf.distribute refuses a global batch that does not split evenly, with a traceback)."""
    three = {**os.environ, "CPU_DEVICES": "3"}

    def pipeline(run_dir: Path, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "tests" / "two_cpu_pipeline.py"), "--preset", "quick",
                               "--data", "sample", "--run-dir", str(run_dir), "--stages", "baseline", "--set",
                               "strategy=mirrored", "--set", "epochs=1", "--set", "train_limit=640", *arguments],
                              cwd=ROOT, env=three, capture_output=True, text=True, timeout=300)
    refused = pipeline(tmp_path / "refused")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert refused.stderr.splitlines()[-1] == ("error: batch_size 128 does not split evenly over the strategy's 3 "
                                               "replicas: set --set batch_size= a multiple of 3, such as 126.")
    assert "Traceback" not in refused.stderr  # above it only TensorFlow's native start-up notices
    done = pipeline(tmp_path / "trained", "--set", "batch_size=129")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "trained" / "summary.json").read_text())
    assert "MirroredStrategy (3 replica(s))" in summary["environment"]["strategy"]
    entry = summary["stages"]["baseline"]  # four steps: trained, validated, kept, exported; not yet learned
    assert entry["status"] == "done" and entry["export"]["parity_max_abs_diff"] <= 1e-5


@pytest.mark.slow
def test_mirrored_under_mixed_bfloat16_learns_as_the_default_strategy_and_exports_float32(tmp_path):
    """The GPU path with the policy `auto` picks on recent GPUs: two replicas computing in bfloat16, the variables,
    evaluation and export in float32, within 0.5 pp of the default strategy under the same policy."""
    entries = {}
    for strategy in ("default", "mirrored"):
        run(tmp_path / strategy, strategy, "--set", "precision=mixed_bfloat16")
        entries[strategy] = stage_entry(tmp_path / strategy)[1]
    mirrored = entries["mirrored"]
    assert mirrored["precision"] == {"policy": "mixed_bfloat16", "why": "set"}
    assert entries["default"]["test_accuracy"] > 0.85
    assert abs(mirrored["test_accuracy"] - entries["default"]["test_accuracy"]) <= 0.005
    assert mirrored["export"]["parity_max_abs_diff"] <= 1e-5
    assert onnx_accuracy(tmp_path / "mirrored", mirrored, "test") == pytest.approx(mirrored["test_accuracy"],
                                                                                    abs=0.002)
