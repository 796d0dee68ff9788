"""For the tests that run the pipeline's command as processes: a cluster of workers on 127.0.0.1, and what they
read of the run directory without starting TensorFlow (the chief's latest checkpoint, a stage's final weights).
"""
import io
import json
import os
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def worker_log(logs: Path, index: int) -> Path:
    return logs.with_name(f"{logs.name}-worker-{index}.log")


def start_workers(commands: list[list[str]], tf_configs: list[dict], logs: Path, **env) -> list[subprocess.Popen]:
    """One process per worker, each its command with its TF_CONFIG (and `env`), output to logs-worker-<index>.log."""
    workers = []
    for index, (command, tf_config) in enumerate(zip(commands, tf_configs, strict=True)):
        environment = {**os.environ, **env, "TF_CONFIG": json.dumps(tf_config)}
        with open(worker_log(logs, index), "w") as log:
            workers.append(subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT))
    return workers


def finish(workers: list[subprocess.Popen], logs: Path, code: int = 0) -> list[str]:
    """Every worker's output, once all have exited with `code`; a worker still running after 240 s is killed."""
    try:
        for worker in workers:
            worker.wait(timeout=240)
    finally:  # a worker left waiting on a collective must not outlive the test
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    outputs = [worker_log(logs, index).read_text() for index in range(len(workers))]
    assert [w.returncode for w in workers] == [code] * len(workers), "\n----\n".join(o[-4000:] for o in outputs)
    return outputs


def checkpointed_epoch(run_dir: Path, stage: str) -> int:
    """The epoch of the chief's latest checkpoint of a stage (the CheckpointManager's state names ckpt-<n>)."""
    states = list((run_dir / "checkpoints").glob(f"{stage}-*/checkpoint"))
    if not states:
        return 0
    match = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', states[0].read_text())
    return int(match.group(1)) if match else 0


def final_weights(run_dir: Path, stage: str) -> dict:
    """The arrays of a stage's model.keras by their path in its weights file (read without starting TensorFlow)."""
    with zipfile.ZipFile(run_dir / "stages" / stage / "model.keras") as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
            arrays = {}
            weights.visititems(lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset)
                               else None)
    return arrays


def killed_after_checkpoint(processes: list[subprocess.Popen], run_dir: Path, stage: str, epoch: int = 2) -> int:
    """SIGKILL every process once the chief has checkpointed `epoch` of the stage (or after 180 s); the epoch the
    checkpoint then holds. Every process must still have been running: one that ended could not be killed."""
    deadline = time.time() + 180
    try:
        while time.time() < deadline and all(p.poll() is None for p in processes) and \
                checkpointed_epoch(run_dir, stage) < epoch:
            time.sleep(0.01)
    finally:
        for process in processes:
            process.send_signal(signal.SIGKILL)
        for process in processes:
            process.wait()
    assert all(p.returncode == -signal.SIGKILL for p in processes), "a run ended before it could be killed"
    return checkpointed_epoch(run_dir, stage)


def assert_same_weights(whole: Path, resumed: Path, stage: str, arrays: int) -> None:
    """The stage's kept weights in two runs, array for array (`arrays`: how many the network holds)."""
    expected, found = final_weights(whole, stage), final_weights(resumed, stage)
    assert len(expected) == arrays and sorted(expected) == sorted(found)
    for name in expected:
        np.testing.assert_array_equal(expected[name], found[name], err_msg=name)
