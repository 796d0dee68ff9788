"""One model stage: train, evaluate and export its best network; for a voting stage, its networks and their vote.

A stage is handed a StageJob (its recipe resolved, its inputs, where its
outputs go) and returns its summary entry, which the runner records: it reads
nothing of the runner. It writes its output directory and a voting stage's
bundle (the run's bundle/ or its own bundle/, as its Stage row says) through
temporary directories, so a stage is complete or absent.
Training state lives in a checkpoint directory until the stage is complete,
so a killed stage resumes where it stopped.
"""
import contextlib
import csv
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mnist_cnn_progression.inference import run_layout as layout
from mnist_cnn_progression.inference.contract import as_images
from mnist_cnn_progression.inference.vote import vote
from mnist_cnn_progression.models.networks import load_model
from mnist_cnn_progression.export.bundle import build_bundle
from mnist_cnn_progression.export.tf_export import export_model
from mnist_cnn_progression.inference.files import staged_directory, write_json
from mnist_cnn_progression.pipeline.config import as_record
from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.evaluate import evaluate
from mnist_cnn_progression.pipeline.sources import Splits
from mnist_cnn_progression.pipeline.stages import Stage
from mnist_cnn_progression.pipeline.strategy import is_chief, is_default
from mnist_cnn_progression.pipeline.train import Trained, TrainSettings, predict, train, write_history_csv

# The int8 bundle is calibrated on the first 1,000 training images (export.bundle: not all, for memory).
CALIBRATION_IMAGES = 1000


@dataclass(frozen=True)
class StageJob:
    """What a model stage is handed: everything it reads, resolved by the runner."""
    stage: Stage
    settings: tuple[TrainSettings, ...]  # member k's at [k]; one for a single network
    splits: Splits                       # with the expanded set loaded when the stage trains on it
    output: Path | None                  # stages/<id>/; None on a worker other than the chief, which writes nothing
    output_name: str                     # the output as the run's files name it ("stages/<id>")
    checkpoint_dir: Path
    tensorboard_dir: Path
    strategy: object                     # a tf.distribute.Strategy
    log: Callable[[str], None]
    train_limit: int = 0
    parallel_members: int | str = "auto"
    chain_epochs: int = 0
    member_zero_dir: Path | None = None  # a finished stage whose network is member 0 (Stage.member_zero_from) ...
    member_zero_entry: dict = field(default_factory=dict)  # ... and its summary entry
    bundle: Path | None = None           # the run's bundle/ for a Stage.run_bundle stage; else the stage's own
    data: dict = field(default_factory=dict)  # the training data's provenance, for the bundle's metadata


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=-1) == labels).mean())


def calibration_images(splits: Splits) -> np.ndarray:
    """The training images the bundle's int8 ranges are fitted on (build_bundle scales them as the networks take them)."""
    return splits.train_images[:CALIBRATION_IMAGES]


def train_member(job: StageJob, checkpoint_dir: Path, member: int = 0, log=None, queued_after: int = 0,
                 start_from: Trained | None = None) -> Trained:
    return train(job.stage.network, job.splits, job.stage.data, job.settings[member], job.strategy, checkpoint_dir,
                 log=log or job.log, train_limit=job.train_limit,
                 tensorboard_dir=job.tensorboard_dir / f"member_{member}", queued_after=queued_after,
                 start_weights=start_from.model.get_weights() if start_from else None)


def export(model, out_dir: Path, run_relative: str, name: str, metadata: dict, splits) -> dict:
    result = export_model(model, out_dir, name=name, metadata=metadata, images=as_images(splits.test_images))
    for key in ("savedmodel", "onnx"):
        result[key] = f"{run_relative}/{result[key]}"
    return result


def run(job: StageJob) -> dict:
    """Train, evaluate and export the stage; its summary entry ({} on a worker other than the chief)."""
    entry = run_ensemble(job) if job.stage.members > 1 else run_single(job)
    if not is_chief(job.strategy):  # another worker: it trained in step with the chief, which writes the rest
        return entry
    for stale in job.checkpoint_dir.parent.glob(f"{job.stage.id}-*"):  # this run's and any from older settings
        shutil.rmtree(stale, ignore_errors=True)
    return entry


def describe(stage, trained: Trained, settings) -> dict:
    return {"network": stage.network.describe(), "data": stage.data, "epochs": settings.epochs,
            "best_epoch": trained.best_epoch, "val_accuracy": trained.best_val_accuracy,
            "reference_accuracy": stage.reference, "train_images_per_second": round(trained.images_per_second, 1),
            "resumed_from_epoch": trained.resumed_from_epoch, "settings": as_record(settings)}


def run_single(job: StageJob) -> dict:
    stage, splits = job.stage, job.splits
    trained = train_member(job, job.checkpoint_dir)
    if not is_chief(job.strategy):
        return {}
    probabilities = predict(trained.model, splits.test_images)
    entry = describe(stage, trained, job.settings[0])
    entry["test_accuracy"] = accuracy(probabilities, splits.test_labels)
    entry["evaluation"] = evaluate(probabilities, splits.test_labels, stage.reference)
    with staged_directory(job.output) as tmp:
        trained.model.save(tmp / layout.MODEL)
        write_history_csv(tmp / layout.HISTORY, trained.history)
        np.save(tmp / layout.TEST_PROBABILITIES, probabilities)
        write_json(tmp / layout.EVALUATION, entry["evaluation"])
        metadata = {"stage": stage.id, "network": entry["network"], "reference_accuracy": stage.reference,
                    "test_accuracy": entry["test_accuracy"]}
        entry["export"] = export(trained.model, tmp / layout.EXPORT, f"{job.output_name}/{layout.EXPORT}", stage.id,
                                 metadata, splits)
    return entry


def reused_member_zero(job: StageJob) -> Trained | None:
    """The finished network the runner found fit to be member 0 (StageJob.member_zero_dir), loaded."""
    if job.member_zero_dir is None:
        return None
    source = job.member_zero_entry
    with open(job.member_zero_dir / layout.HISTORY) as stream:
        history = [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()} for row in csv.DictReader(stream)]
    job.log(f"  member 0 is the {job.stage.member_zero_from} stage's network (same recipe)")
    return Trained(model=load_model(job.member_zero_dir / layout.MODEL), history=history,
                   best_epoch=source["best_epoch"], best_val_accuracy=source["val_accuracy"],
                   images_per_second=source["train_images_per_second"])


def members_at_once(wanted, strategy, count: int) -> int:
    """How many ensemble members train side by side (setting parallel_members; "auto" decides from the hardware).

    On CPU under the default strategy, one per core, up to the count: small
    kernels leave cores idle, and a second network fills them (benchmarks/
    train_throughput.py, 2 cores: 1.25x at batch 10, 1.10x at batch 128). Under Mirrored
    (GPUs) one member already uses every device, and under MultiWorker every
    worker must issue the same collectives in the same order, so members go
    one after another.
    """
    if wanted != "auto":
        if not isinstance(wanted, int) or wanted < 1:
            raise PipelineError(f"parallel_members must be auto or a whole number of at least 1, not {wanted!r}.")
        return min(wanted, count)
    return max(1, min(os.cpu_count() or 1, count)) if is_default(strategy) else 1


def run_concurrently(jobs: list, workers: int) -> list:
    """Each job's result, in order, running at most `workers` jobs at a time; the first failure is raised.

    Daemon threads: Ctrl-C stops the run at once, like a kill, and every
    member resumes from its last checkpoint next time.
    """
    if workers <= 1:
        return [job() for job in jobs]
    results, failures, pending, lock = [None] * len(jobs), [], list(enumerate(jobs)), threading.Lock()

    def worker():
        while not failures:
            with lock:
                if not pending:
                    return
                index, job = pending.pop(0)
            try:
                results[index] = job()
            except BaseException as error:  # re-raised in the calling thread
                failures.append(error)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, len(jobs)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return results


@contextlib.contextmanager
def bundle_directory(job: StageJob, stage_tmp: Path):
    """Where a voting stage's bundle goes: the run's bundle/ (Stage.run_bundle), else its stage's own."""
    if job.bundle is not None:
        with staged_directory(job.bundle) as bundle:
            yield bundle
    else:
        (stage_tmp / layout.BUNDLE).mkdir()
        yield stage_tmp / layout.BUNDLE


def train_chain(job: StageJob, to_train: list, first: Trained | None) -> list:
    """A snapshot ensemble (Huang et al. 2017): each member starts from the kept weights of the one before it.

    Each runs its own warm-up and cosine cycle on its own seed, so it leaves
    its predecessor's minimum for a nearby one: every member builds on all the
    training before it, for no more images than an independent member.
    One after another, necessarily.
    """
    members = [first] if first else []
    for position, k in enumerate(to_train):
        log = lambda text, k=k: job.log(f"  [member {k}]{text}")
        members.append(train_member(job, job.checkpoint_dir / f"member_{k}", member=k, log=log,
                                    queued_after=len(to_train) - 1 - position, start_from=members[-1] if k else None))
    return members


def train_side_by_side(job: StageJob, to_train: list, first: Trained | None, workers: int) -> list:
    """Independent members, `workers` at a time."""
    rounds = -(-len(to_train) // workers)

    def member(position, k):
        log = lambda text: job.log(f"  [member {k}]{text}")
        return lambda: train_member(job, job.checkpoint_dir / f"member_{k}", member=k, log=log,
                                    queued_after=rounds - 1 - position // workers)

    return ([first] if first else []) + run_concurrently([member(position, k) for position, k in enumerate(to_train)],
                                                         workers)


def run_ensemble(job: StageJob) -> dict:
    stage, splits = job.stage, job.splits
    reused = reused_member_zero(job)
    to_train = [k for k in range(stage.members) if not (k == 0 and reused)]
    chained = job.chain_epochs > 0
    workers = 1 if chained else members_at_once(job.parallel_members, job.strategy, len(to_train))
    if to_train:
        how = (f"each training {job.settings[-1].epochs} epoch(s) on from the one before it" if chained
               else f"{workers} at a time")
        job.log(f"  training member(s) {', '.join(map(str, to_train))} of {stage.members}, {how}")
    if chained:
        members = train_chain(job, to_train, reused)
    else:
        members = train_side_by_side(job, to_train, reused, workers)
    if not is_chief(job.strategy):
        return {}
    test = np.stack([predict(m.model, splits.test_images) for m in members])
    validation = np.stack([predict(m.model, splits.validation_images) for m in members])
    classes, _, _ = vote(test)
    val_classes, _, _ = vote(validation)
    entry = describe(stage, members[0], job.settings[0])
    entry.update(
        best_epoch=None, val_accuracy=float((val_classes == splits.validation_labels).mean()),
        test_accuracy=float((classes == splits.test_labels).mean()),
        train_images_per_second=round(float(np.mean([m.images_per_second for m in members])), 1),
        members_at_once=workers, chain_epochs=job.chain_epochs,
        members=[{"seed": s.seed, "epochs": s.epochs, "best_epoch": m.best_epoch, "val_accuracy": m.best_val_accuracy,
                  "test_accuracy": accuracy(p, splits.test_labels)}
                 for s, m, p in zip(job.settings, members, test)],
        evaluation=evaluate(None, splits.test_labels, stage.reference, predictions=classes))
    with staged_directory(job.output) as tmp:
        (tmp / layout.MEMBERS).mkdir()
        exports = []
        for k, member in enumerate(members):
            member.model.save(tmp / layout.member_model(k))
            write_history_csv(tmp / layout.member_history(k), member.history)
            metadata = {"stage": stage.id, "member": k, "network": entry["network"],
                        "reference_accuracy": stage.reference, "test_accuracy": entry["members"][k]["test_accuracy"]}
            exports.append(export(member.model, tmp / layout.EXPORT / f"member_{k}",
                                  f"{job.output_name}/{layout.EXPORT}/member_{k}", f"member_{k}", metadata, splits))
        np.save(tmp / layout.MEMBER_PROBABILITIES, test)
        write_json(tmp / layout.EVALUATION, entry["evaluation"])
        entry["export"] = {"members": exports,
                           "parity_max_abs_diff": max(e["parity_max_abs_diff"] for e in exports)}
        with bundle_directory(job, tmp) as bundle:
            entry["bundle"] = build_bundle(
                [tmp / layout.EXPORT / f"member_{k}" / Path(e["onnx"]).name for k, e in enumerate(exports)], bundle,
                calibration_images=calibration_images(splits),
                test_images=as_images(splits.test_images), test_labels=splits.test_labels,
                metadata={"stage": stage.id, "network": entry["network"], "reference_accuracy": stage.reference,
                          "keras_vote_accuracy": entry["test_accuracy"], "data": job.data})
    return entry
