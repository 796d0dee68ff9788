"""Training: the best-validation rule, repeatability, resuming after SIGKILL, and two workers staying in sync."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from mnist_cnn_progression.models.networks import build_network
from mnist_cnn_progression.pipeline import strategy as strategies
from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.modelstage import (StageJob, members_at_once, run_concurrently, train_chain,
                                                       train_side_by_side)
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID
from mnist_cnn_progression.pipeline.train import TrainSettings, shift_only_from, train
from conftest import free_ports
from pipeline_runs import ROOT, killed_after_checkpoint


def quiet(*args):
    pass


def member_job(stage, splits, checkpoint_dir, settings: list, log=quiet, train_limit=0) -> StageJob:
    """A voting stage's job as the runner would hand it: member k trains with settings[k]."""
    return StageJob(stage=stage, settings=tuple(settings), splits=splits, output=None, output_name="",
                    checkpoint_dir=checkpoint_dir, tensorboard_dir=checkpoint_dir / "tensorboard",
                    strategy=strategies.choose("default"), log=log, train_limit=train_limit)


def test_a_tie_goes_to_the_later_epoch(sample, tmp_path):
    # With a zero learning rate every epoch has the same validation accuracy: the last one must win.
    settings = TrainSettings(epochs=3, batch_size=50, optimizer="sgd", learning_rate=0.0, steps_per_call=10)
    trained = train(STAGE_BY_ID["baseline"].network, sample, "train", settings, strategies.choose("default"),
                    tmp_path, log=quiet, train_limit=500)
    assert len({h["val_accuracy"] for h in trained.history}) == 1
    assert trained.best_epoch == 3


def test_best_epoch_weights_are_the_ones_returned(sample, tmp_path):
    settings = TrainSettings(epochs=3, batch_size=50, optimizer="adam", learning_rate=0.002, shuffle=True)
    trained = train(STAGE_BY_ID["conv2_relu"].network, sample, "train", settings, strategies.choose("default"),
                    tmp_path, log=quiet, train_limit=1000)
    best = max(h["val_accuracy"] for h in trained.history)
    assert trained.best_val_accuracy == best
    assert trained.best_epoch == max(h["epoch"] for h in trained.history if h["val_accuracy"] == best)
    from mnist_cnn_progression.pipeline.train import predict
    accuracy = (predict(trained.model, sample.validation_images).argmax(1) == sample.validation_labels).mean()
    assert accuracy == pytest.approx(best)


def test_seeded_training_is_repeatable(sample, tmp_path):
    settings = TrainSettings(epochs=2, batch_size=20, optimizer="adam", learning_rate=0.001, init="he",
                             shuffle=True, max_shift=1, seed=5)
    runs = [train(STAGE_BY_ID["dropout"].network, sample, "train", settings, strategies.choose("default"),
                  tmp_path / str(i), log=quiet, train_limit=400) for i in range(2)]
    for a, b in zip(*(r.model.weights for r in runs)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Repeatable, and not because nothing happened: the weights left their seeded start and the network learned.
    start = build_network(STAGE_BY_ID["dropout"].network, seed=settings.seed, init=settings.init).get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(runs[0].model.get_weights(), start))
    assert runs[0].best_val_accuracy > 0.2  # chance is 0.1


@pytest.mark.slow
def test_members_trained_side_by_side_equal_members_trained_one_after_another(sample, tmp_path):
    """The ensemble's concurrent training must not change a member: every random op is explicitly seeded."""
    settings = TrainSettings(epochs=1, batch_size=20, optimizer="adam", learning_rate=0.002, shuffle=True,
                             max_shift=1)

    def member(seed, mode):
        return lambda: train(STAGE_BY_ID["dropout"].network, sample, "train", replace(settings, seed=seed),
                             strategies.choose("default"), tmp_path / mode / str(seed), log=quiet, train_limit=400)

    alone = run_concurrently([member(seed, "alone") for seed in (0, 1)], workers=1)
    together = run_concurrently([member(seed, "together") for seed in (0, 1)], workers=2)
    for one, other in zip(alone, together):
        for a, b in zip(one.model.weights, other.model.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(alone[0].model.weights[0].numpy(), alone[1].model.weights[0].numpy())


def test_concurrent_jobs_keep_their_order_and_raise_the_first_failure():
    assert run_concurrently([lambda k=k: k * k for k in range(5)], workers=2) == [0, 1, 4, 9, 16]

    def fail():
        raise ValueError("member 1 failed")
    with pytest.raises(ValueError, match="member 1 failed"):
        run_concurrently([lambda: 0, fail, lambda: 2], workers=2)


def test_members_at_once_follows_the_setting_and_the_hardware():
    default = strategies.choose("default")
    assert members_at_once("auto", default, 4) == min(os.cpu_count(), 4)
    assert members_at_once(3, default, 2) == 2 and members_at_once(3, default, 4) == 3
    with pytest.raises(PipelineError, match="parallel_members must be auto or a whole number"):
        members_at_once("two", default, 4)


@pytest.mark.slow
def test_chained_members_start_from_the_one_before_and_independent_ones_do_not(sample, tmp_path):
    """Member 1 learns, member 2 has learning rate 0 and so ends where it starts: chained, at member 1's weights."""
    stage = STAGE_BY_ID["baseline"]
    still = TrainSettings(epochs=1, batch_size=50, optimizer="sgd", learning_rate=0.0)
    settings = [replace(still, seed=k, learning_rate=0.1 if k == 1 else 0.0) for k in range(3)]
    job = lambda directory: member_job(stage, sample, directory, settings, train_limit=500)
    first = train(stage.network, sample, "train", replace(still, seed=99), strategies.choose("default"),
                  tmp_path / "first", log=quiet, train_limit=500)
    chained = train_chain(job(tmp_path / "chained"), [1, 2], first)
    independent = train_side_by_side(job(tmp_path / "independent"), [1, 2], first, workers=1)
    assert chained[0] is first and independent[0] is first and len(chained) == len(independent) == 3
    weights = lambda member: member.model.get_weights()[0]
    assert not np.array_equal(weights(chained[1]), weights(first))  # member 1 moved on from member 0
    np.testing.assert_array_equal(weights(chained[2]), weights(chained[1]))  # member 2 began where member 1 ended
    assert not any(np.array_equal(weights(member), weights(first)) for member in independent[1:])


@pytest.mark.slow
def test_a_killed_stage_resumes_from_its_last_finished_epoch(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "run_pipeline.py"), "--preset", "quick", "--data", "sample",
               "--run-dir", str(run_dir), "--stages", "conv2_relu", "--set", "epochs=6", "--set", "train_limit=3000",
               "--set", "batch_size=32"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert 2 <= killed_after_checkpoint([first], run_dir, "conv2_relu") < 6
    assert not (run_dir / "stages" / "conv2_relu").exists()  # nothing half-done taken for finished

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    resumed = int(second.stdout.split("resuming after epoch ")[1].split()[0])
    assert resumed >= 2  # not from zero
    assert f"epoch {resumed + 1:3d}/6" in second.stdout and f"epoch {resumed:3d}/6" not in second.stdout
    summary = json.loads((run_dir / "summary.json").read_text())["stages"]["conv2_relu"]
    history = (run_dir / "stages" / "conv2_relu" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 6  # header + every epoch, before and after the kill
    accuracies = [float(line.split(",")[2]) for line in history[1:]]
    assert summary["best_epoch"] == max(i + 1 for i, a in enumerate(accuracies) if a == max(accuracies))
    assert summary["resumed_from_epoch"] == resumed
    assert not list((run_dir / "checkpoints").glob("conv2_relu-*"))


class Stopped(Exception):
    pass


def stopped_after_epoch_1_then_resumed(run, tmp_path) -> tuple:
    """run(directory, log) straight through, and once stopped right after epoch 1 (as a kill would leave it) then
    run again: (the whole run, the resumed one, the resumed run's log lines)."""
    def stop_after_epoch_1(text):
        if text.lstrip().startswith("epoch   1/"):  # logged once epoch 1 is checkpointed
            raise Stopped

    whole = run(tmp_path / "whole", quiet)
    with pytest.raises(Stopped):
        run(tmp_path / "resumed", stop_after_epoch_1)
    lines = []
    return whole, run(tmp_path / "resumed", lines.append), lines


@pytest.mark.slow
def test_a_stage_stopped_after_an_epoch_resumes_to_the_weights_of_an_uninterrupted_run(sample, tmp_path):
    """Exact resume: weights, optimizer, best weights and the dropout seed state all come back from the checkpoint.

    The dropout network, reshuffled and shifted, under the default strategy:
    stopped right after epoch 1 was checkpointed (as a kill would leave it),
    then resumed by a new model, it must end exactly where a run straight
    through ends: every variable of the last checkpoint, and the best weights.
    """
    settings = TrainSettings(epochs=3, batch_size=20, optimizer="adam", learning_rate=0.002, shuffle=True,
                             max_shift=1, steps_per_call=7, seed=2)
    run = lambda directory, log: train(STAGE_BY_ID["dropout"].network, sample, "train", settings,
                                       strategies.choose("default"), directory, log=log, train_limit=300)
    whole, resumed, lines = stopped_after_epoch_1_then_resumed(run, tmp_path)
    assert any("resuming after epoch 1 of 3" in line for line in lines)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3] and resumed.resumed_from_epoch == 1
    assert [h["val_accuracy"] for h in resumed.history] == [h["val_accuracy"] for h in whole.history]
    for a, b in zip(whole.model.weights, resumed.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    import tensorflow as tf
    readers = [tf.train.load_checkpoint(str(tmp_path / name)) for name in ("whole", "resumed")]
    names = sorted(readers[0].get_variable_to_shape_map())
    assert names == sorted(readers[1].get_variable_to_shape_map())
    assert sum(name.startswith("optimizer/_trainable_variables/") for name in names) == 10  # the model's weights
    for name in names:
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name), err_msg=name)


@pytest.mark.slow
def test_a_chain_stopped_in_a_later_member_resumes_to_the_members_of_an_uninterrupted_chain(sample, tmp_path):
    """A finished member is read back from its checkpoint as the next one's start, so the chain ends as if unbroken."""
    settings = TrainSettings(epochs=2, batch_size=20, optimizer="adam", learning_rate=0.002, shuffle=True,
                             steps_per_call=7)
    stage = replace(STAGE_BY_ID["dropout"], data="train")  # its network (with dropout's random state), the 50k set
    members = [replace(settings, seed=k) for k in range(3)]
    chain = lambda directory, log=quiet: train_chain(member_job(stage, sample, directory, members, log, 300),
                                                     [0, 1, 2], None)

    def stop_in_member_2(text):
        if "[member 2]" in text and "epoch   1/2" in text:  # logged once member 2's epoch 1 is checkpointed
            raise Stopped

    whole = chain(tmp_path / "whole")
    with pytest.raises(Stopped):
        chain(tmp_path / "resumed", stop_in_member_2)
    resumed = chain(tmp_path / "resumed")
    assert [member.resumed_from_epoch for member in resumed] == [2, 2, 1]
    for one, other in zip(whole, resumed):
        for a, b in zip(one.model.get_weights(), other.model.get_weights()):
            np.testing.assert_array_equal(a, b)



@pytest.mark.slow
def test_two_workers_on_localhost_end_with_identical_weights(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        (tmp_path / str(index)).mkdir()
        workers.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "multiworker_worker.py"),
                                         str(tmp_path / str(index) / "weights.npz"), str(tmp_path / "checkpoints")],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    a, b = (np.load(tmp_path / str(i) / "weights.npz") for i in range(2))
    assert int(a["replicas"]) == 2 and bool(a["chief"]) and not bool(b["chief"])
    weights = [k for k in a.files if k.startswith("arr_")]
    assert len(weights) == 8  # four layers, kernel and bias each
    for key in weights:
        np.testing.assert_array_equal(a[key], b[key])
    assert float(a["val"]) > 0.5  # it did learn
    assert not np.array_equal(a["mask"], b["mask"])  # each worker's replica draws its own dropout masks
    assert 0.3 < a["mask"].mean() < 0.7 and 0.3 < b["mask"].mean() < 0.7
    # The chief checkpoints to the run's place, the other worker to its own stable place beside it.
    assert (tmp_path / "checkpoints" / "checkpoint").exists()
    assert (tmp_path / "checkpoints" / "worker-1" / "checkpoint").exists()


def test_the_time_left_counts_the_networks_queued_after_this_one(sample, tmp_path, monkeypatch):
    """A clock that ticks one second per reading: an epoch reads it twice after its start, so it takes 2 s."""
    from mnist_cnn_progression.pipeline import train as training
    ticks = iter(range(10**6))
    monkeypatch.setattr(training.time, "perf_counter", lambda: float(next(ticks)))
    lines = []
    settings = TrainSettings(epochs=3, batch_size=50, optimizer="adam", learning_rate=0.002)
    train(STAGE_BY_ID["baseline"].network, sample, "train", settings, strategies.choose("default"), tmp_path,
          log=lines.append, train_limit=500, queued_after=2)
    epochs = [line for line in lines if "epoch" in line and "left" in line]
    # epoch 1 of 3 with two more 3-epoch networks queued: (2 + 2 x 3) epochs of 2 s are left.
    assert [line.rsplit("~", 1)[1] for line in epochs] == ["16 s left", "14 s left", "12 s left"]


@pytest.mark.parametrize("last, first", [(0, 0), (1, 3), (3, 1), (4, 1)])
def test_the_shift_only_epochs_are_the_last_ones_asked_for(last, first):
    settings = TrainSettings(epochs=3, batch_size=128, optimizer="adam", learning_rate=0.002,
                             shift_only_last_epochs=last)
    assert shift_only_from(settings) == first
