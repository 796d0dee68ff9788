"""The runner: steps and stages as a small dependency graph over one run directory.

Each node declares what it reads and what it writes. A node is skipped when
its output exists and the manifest records the same fingerprint of its
inputs and settings; otherwise it is redone, writing into a temporary
directory that is renamed into place only when complete.

    download  -> data/          (reads the --data source)
    expand    -> expanded/      (reads data/)
    <stage>   -> stages/<id>/   (reads data/ or expanded/, the stage spec and its settings)
    ensemble  -> stages/ensemble/, bundle/   (also reads stages/dropout/)
    beyond    -> stages/beyond/ (its bundle in stages/beyond/bundle/; optional, run when named)
    report    -> report/        (reads everything above that exists)

The nodes and what each needs are the table in pipeline.stages. A model stage
is handed a resolved job and returns its entry (pipeline.modelstage), which
the runner records. TensorFlow's modules (strategy, modelstage) are imported
where first used: the argument check and a run that only prepares data never
load TensorFlow.
"""
import dataclasses
import importlib.metadata
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from mnist_cnn_progression.inference.files import digest_arrays, staged_directory, write_json
from mnist_cnn_progression.inference.releases import test_digest
from mnist_cnn_progression.inference.run_layout import MODEL, RunLayout
from mnist_cnn_progression.pipeline import config, expand, sources
from mnist_cnn_progression.pipeline.rundir import clean_unfinished, fingerprint, run_lock
from mnist_cnn_progression.pipeline.errors import PipelineError, did_you_mean
from mnist_cnn_progression.pipeline.progress import minutes
from mnist_cnn_progression.pipeline.stages import NODE_BY_ID, NODES, STAGE_BY_ID, STEPS, Stage

STEP_IDS = [step.id for step in STEPS]
DEFAULT_NODES = [node.id for node in NODES if not (isinstance(node, Stage) and node.optional)]
SPLIT_NAMES = [f"{part}_{kind}" for part in ("train", "validation", "test") for kind in ("images", "labels")]
SHARD_SIZE = 50_000
SOURCE_COMMIT = Path(__file__).with_name("source_commit.txt")  # in a plain install (setup.py)
NOT_FROM_GIT = "not from a git checkout"
# Member k of a voting stage trains with seed + k x this: runs with base seeds 0, 1, 2 share no network.
MEMBER_SEED_STRIDE = 1000
# What training an image costs whatever the network (input pipeline, optimizer, small kernels), in
# multiply-accumulates' worth of time: the fc100 baseline (79k MACs) trains 4x, not 40x, faster per
# image than the stage-6 network (3.2M MACs) on this CPU (58 s for 1.5M images against 250 s).
PER_IMAGE_OVERHEAD = 1_000_000
PACKAGES = ("tensorflow", "keras", "tensorflow-datasets", "onnx", "onnxruntime", "tf2onnx", "numpy", "protobuf")


def plan(requested: list[str]) -> list[str]:
    """The requested nodes plus everything they need (the table's `needs`), in the table's order."""
    unknown = [name for name in requested if name not in NODE_BY_ID]
    if unknown:
        choices = STEP_IDS + list(STAGE_BY_ID)
        raise PipelineError(f"Unknown step or stage {', '.join(unknown)}: choose from {', '.join(choices)}."
                            + did_you_mean(unknown, choices))
    needed, todo = set(), list(requested)
    while todo:
        node = todo.pop()
        if node not in needed:
            needed.add(node)
            todo.extend(NODE_BY_ID[node].needs)
    return [node.id for node in NODES if node.id in needed]


def environment() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), **versions, "git_commit": source_commit(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"}


def source_commit() -> str:
    """The commit of the code that runs: written into a plain install when it was built (setup.py), else asked of
    the checkout the code runs from (an editable install), else NOT_FROM_GIT."""
    if SOURCE_COMMIT.is_file():
        return SOURCE_COMMIT.read_text().strip()
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SOURCE_COMMIT.parent, capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return NOT_FROM_GIT
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else NOT_FROM_GIT


def best_epochs(entry: dict) -> str:
    """The selected epoch of a summary.json stage entry, or of each ensemble member."""
    members = entry.get("members")
    if members:
        return "members' best epochs " + ", ".join(str(m.get("best_epoch")) for m in members)
    return f"best epoch {entry.get('best_epoch')}"


def stage_warning(entry: dict, sample: bool) -> str | None:
    """A sentence for a stage that did not really learn (under 50%, or on full MNIST 10 pp under its reference),
    or for a vote that scores below its own best member."""
    accuracy, reference = entry["test_accuracy"], entry["reference_accuracy"]
    if accuracy < 0.5:
        return (f"test accuracy {accuracy:.2%} is near chance: the network did not learn; "
                f"give it more updates (epochs, min_steps) or another learning rate.")
    if not sample and accuracy < reference - 0.10:
        return f"test accuracy {accuracy:.2%} is more than 10 points under the reference {reference:.2%}."
    best = max(entry.get("members") or [], key=lambda member: member["test_accuracy"], default=None)
    if best and accuracy < best["test_accuracy"]:
        return (f"the vote's test accuracy {accuracy:.2%} is below that of its best member, "
                f"{best['test_accuracy']:.2%} (seed {best['seed']}): the weaker members outvote it; a vote "
                f"gains only when its members are strong and differ in their mistakes (train them longer, or on more "
                f"images).")
    return None


class Runner:
    def __init__(self, run_dir: Path, preset: str, settings: dict, data_spec: str, force: bool = False,
                 log=print, strategy=None):
        self.run_dir, self.preset, self.settings = Path(run_dir), preset, settings
        self.data_spec, self.force, self.log = data_spec, force, log
        self.layout = RunLayout(self.run_dir)
        self._strategy = strategy  # None: chosen from the hardware when training first needs it
        self.summary_path = self.layout.summary
        self.manifest_path = self.layout.manifest
        self.summary = self._read_json(self.summary_path)
        self.manifest = self._read_json(self.manifest_path)
        self.splits = None
        self.started = time.perf_counter()  # for the whole-run line
        self._trained_work, self._trained_seconds = 0, 0.0  # the stages this run trained: their cost and time
        self.task = None  # in a multi-worker run, another worker's name ("worker-1"): it writes none of the run's files
        if strategy is not None:
            from mnist_cnn_progression.pipeline.strategy import task_name
            self.task = task_name(strategy)
            self._record_strategy()

    @staticmethod
    def _read_json(path: Path) -> dict:
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def strategy(self):
        """Created on first use: a run that only prepares data never starts TensorFlow's runtime."""
        if self._strategy is None:
            from mnist_cnn_progression.pipeline import strategy
            self._strategy = strategy.choose(self.settings["strategy"])
            self._record_strategy()
        return self._strategy

    def _record_strategy(self):
        """The strategy and devices, into summary.json's environment (once, when the strategy is set)."""
        import tensorflow as tf

        from mnist_cnn_progression.pipeline import strategy
        gpus = tf.config.list_logical_devices("GPU")
        self.summary.setdefault("environment", {}).update(
            strategy=strategy.describe(self._strategy), device=f"GPU x{len(gpus)}" if gpus else "CPU")

    # -- bookkeeping ------------------------------------------------------------------------------
    def _save(self):
        self.summary.update(preset=self.preset, settings=self.settings, seed=self.settings["seed"])
        self.summary.setdefault("environment", {}).update(environment())
        self.summary.setdefault("stages", {})
        write_json(self.summary_path, self.summary)
        write_json(self.manifest_path, self.manifest)

    def _is_done(self, node: str, node_fingerprint: str, output: Path) -> bool:
        return (not self.force and output.exists()
                and self.manifest.get(node, {}).get("fingerprint") == node_fingerprint)

    def _named(self, *directories: Path) -> list[str]:
        """Directories as the manifest lists them: "stages/conv1/"."""
        return [f"{self.layout.name(directory)}/" for directory in directories]

    def _record(self, node: str, node_fingerprint: str, reads: list, writes: list, **extra):
        self.manifest[node] = {"fingerprint": node_fingerprint, "reads": reads, "writes": writes,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        self._save()

    # -- running ----------------------------------------------------------------------------------
    def run(self, requested: list[str]) -> dict:
        with run_lock(self.run_dir, self.task):
            if self.task is None:
                clean_unfinished(self.run_dir)
            nodes = plan(requested)
            stage_ids = [node for node in nodes if node in STAGE_BY_ID]
            steps = {"download": self._download, "expand": self._expand, "report": self._report}
            for node in nodes:
                if self.task is not None and node in steps:
                    continue  # the chief prepares the data and writes the report; the other workers read its data
                if node in STAGE_BY_ID and self.task is None:  # the chief's view; others may not see data yet
                    self._log_progress(stage_ids, node)
                started = time.perf_counter()
                steps[node]() if node in steps else self._stage(STAGE_BY_ID[node])
                self.log(f"[{node}] finished in {time.perf_counter() - started:.1f}s")
            if self.task is None:
                self._save()
            if self._strategy is not None:  # multi-worker: no worker leaves before the chief has written everything
                from mnist_cnn_progression.pipeline.strategy import sum_over_workers
                sum_over_workers(self._strategy, [0])
        return self.summary

    def _log_progress(self, stage_ids: list[str], current: str):
        """The whole-run line: which stage of how many, the time so far and an estimate of the time left.

        The estimate prices each stage still to train by its training_work, at
        the rate the stages trained so far in this run achieved.
        """
        position = stage_ids.index(current)
        left = [STAGE_BY_ID[i] for i in stage_ids[position:]]
        left = [stage for stage in left if not self._is_done(stage.id, self._stage_fingerprint(stage),
                                                             self.layout.stage(stage.id))]
        work = sum(self.training_work(stage) for stage in left)
        estimate = (f"~{minutes(work * self._trained_seconds / self._trained_work)} left" if self._trained_work
                    else "time left known after the first stage")
        self.log(f"[run] stage {position + 1} of {len(stage_ids)} ({current}); "
                 f"{minutes(time.perf_counter() - self.started)} so far, {estimate}")

    def training_work(self, stage: Stage) -> int:
        """A stage's cost in multiply-accumulates: images trained x (the network's + a fixed cost per image)."""
        return self.trained_images(stage) * (stage.network.multiply_accumulates() + PER_IMAGE_OVERHEAD)

    def trained_images(self, stage: Stage) -> int:
        """Images the stage trains on, counted once per network that sees them.

        A voting stage's member 0 is another stage's network when both have
        the same recipe (Stage.member_zero_from): trained once, it counts there.
        """
        first = 1 if self._member_zero_source(stage) else 0
        epochs = sum(self.train_settings(stage, k).epochs for k in range(first, stage.members))
        return self.training_images(stage) * epochs

    def _download(self):
        output = self.layout.data
        previous = self.manifest.get("download", {})
        # "auto" takes an already-prepared cache as it is; a named source must match the one recorded.
        if output.exists() and not self.force and previous and self.data_spec in ("auto", previous.get("source")):
            self.log(f"[download] done already ({previous.get('source')}); skipped")
            return
        self.log(f"[download] reading MNIST from {self.data_spec}")
        splits = sources.load(self.data_spec, self.layout.cache, log=self.log)
        digest = digest_arrays(*(splits.arrays[name] for name in SPLIT_NAMES))
        with staged_directory(output) as tmp:
            for name in SPLIT_NAMES:
                np.save(tmp / f"{name}.npy", splits.arrays[name])
            info = {"source": splits.source, "split": splits.split, "sample": splits.sample,
                    "warning": splits.warning, "digest": digest,
                    "test_digest": test_digest(splits.arrays["test_images"], splits.arrays["test_labels"]),
                    **{part: len(splits.arrays[f"{part}_labels"]) for part in ("train", "validation", "test")}}
            write_json(tmp / self.layout.data_info.name, info)
        if splits.warning:
            self.log(f"WARNING: {splits.warning}")
        if previous.get("fingerprint") not in (None, digest):
            self._mark_out_of_date(f"trained on the data of {previous.get('source')}, not the data now in data/")
        self.summary["data"] = {**info, "expanded_train": None}
        self.manifest.pop("expand", None)  # new data: whatever was expanded from the old is stale
        self._record("download", digest, reads=[self.data_spec], writes=self._named(self.layout.data),
                     source=self.data_spec)
        self.log(f"[download] {info['train']} / {info['validation']} / {info['test']} images from {splits.source}")

    def _mark_out_of_date(self, why: str):
        """New data: every finished stage (and so the bundle and report) was trained on the old; never mix them."""
        stale = [stage_id for stage_id, entry in self.summary.get("stages", {}).items()
                 if entry.get("status") == "done"]
        for stage_id in stale:
            self.summary["stages"][stage_id].update(status="out of date", out_of_date=why)
        if stale:
            self.log(f"[download] the data changed: {', '.join(stale)} (with the bundle and report built from them) "
                     f"were trained on the old data and are marked out of date; each retrains when run")

    def data_provenance(self) -> dict:
        """What a bundle records of its training data, so that whoever deploys it can tell (inference.ensemble)."""
        info = self._data_info()
        return {key: info.get(key) for key in ("source", "split", "sample", "digest", "test_digest", "warning")}

    def _data_info(self) -> dict:
        path = self.layout.data_info
        if not path.exists():
            raise PipelineError(f"{self.run_dir} has no prepared data; run the download step first.")
        return json.loads(path.read_text())

    def _expand(self):
        output = self.layout.expanded
        data_digest = self._data_info()["digest"]
        node_fingerprint = fingerprint({"data": data_digest, "seed": self.settings["seed"]})
        if self._is_done("expand", node_fingerprint, output):
            self.log("[expand] done already; skipped")
            return
        splits = self.load_splits(expanded=False)
        images, labels = expand.expand(splits.train_images, splits.train_labels, seed=self.settings["seed"])
        with staged_directory(output) as tmp:
            for number, start in enumerate(range(0, len(images), SHARD_SIZE)):
                np.save(tmp / f"images_{number:03d}.npy", images[start:start + SHARD_SIZE])
                np.save(tmp / f"labels_{number:03d}.npy", labels[start:start + SHARD_SIZE])
            info = {"count": len(images), "digest": digest_arrays(images, labels), "seed": self.settings["seed"]}
            write_json(tmp / "expanded.json", info)
        self.summary.setdefault("data", {})["expanded_train"] = len(images)
        self.splits = None
        self._record("expand", node_fingerprint, reads=self._named(self.layout.data),
                     writes=self._named(self.layout.expanded))
        self.log(f"[expand] {len(images)} training images")

    def load_splits(self, expanded: bool):
        """The prepared arrays (and the expanded set, when asked), loaded once per run."""
        if self.splits is None:
            data, info = self.layout.data, self._data_info()
            self.splits = sources.Splits(**{name: np.load(data / f"{name}.npy") for name in SPLIT_NAMES},
                                         source=info["source"], split=info["split"])
        if expanded and self.splits.expanded_images is None:
            shards = sorted(self.layout.expanded.glob("images_*.npy"))
            if not shards:
                raise PipelineError(f"{self.run_dir} has no expanded data; run the expand step first.")
            self.splits.expanded_images = np.concatenate([np.load(p) for p in shards])
            self.splits.expanded_labels = np.concatenate(
                [np.load(str(p).replace("images_", "labels_")) for p in shards])
        return self.splits

    def _report(self):
        from mnist_cnn_progression.pipeline.report import write_report
        write_report(self.run_dir)
        self.log(f"[report] {self.layout.report / 'report.html'}")

    # -- model stages -----------------------------------------------------------------------------
    def train_settings(self, stage: Stage, member: int = 0):
        """One network's training settings; member k of a voting stage is seeded MEMBER_SEED_STRIDE x k apart.

        A chained member (k > 0, chain_epochs) trains chain_epochs epochs on from the one before it.
        """
        value = lambda key: config.for_stage(self.settings, key, stage.id)
        reference = lambda key, own: own if value(key) == "reference" else value(key)
        steps_per_epoch = self.training_images(stage) // int(value("batch_size"))
        chain = self.chain_epochs(stage)
        asked = chain if member and chain else reference("epochs", stage.epochs)
        epochs = max(int(asked), -(-int(value("min_steps")) // max(steps_per_epoch, 1)))
        return config.TrainSettings(
            epochs=epochs, batch_size=int(value("batch_size")),
            optimizer=value("optimizer"), learning_rate=float(reference("learning_rate", stage.eta)),
            schedule=value("schedule"), warmup_fraction=float(value("warmup_fraction")), lmbda=stage.lmbda,
            weight_decay=float(value("weight_decay")),
            shuffle=bool(value("shuffle")), max_shift=int(value("max_shift")),
            max_rotation=float(value("max_rotation")), max_zoom=float(value("max_zoom")),
            shift_only_last_epochs=int(value("shift_only_last_epochs")),
            steps_per_call=int(value("steps_per_call")), seed=int(value("seed")) + MEMBER_SEED_STRIDE * member,
            init=value("init"))

    def chain_epochs(self, stage: Stage) -> int:
        """How many epochs each member of a voting stage after the first trains on from the one before (0: none do)."""
        return int(config.for_stage(self.settings, "chain_epochs", stage.id)) if stage.members > 1 else 0

    def training_images(self, stage: Stage) -> int:
        """How many images one epoch of the stage trains on: the first train_limit of its set, when that is set."""
        count = self.training_set_images(stage)
        return min(count, self.settings["train_limit"] or count)

    def training_set_images(self, stage: Stage) -> int:
        """The images of the stage's training set: the run's train split, or 5 times it expanded."""
        return self._data_info()["train"] * (len(expand.SHIFTS) if stage.data == "expanded" else 1)

    def trains_on(self, stage: Stage) -> str:
        """What one epoch of the stage trains on, as the log says it."""
        used, count = self.training_images(stage), self.training_set_images(stage)
        if used < count:
            return f"the first {used:,} of {count:,} {stage.data} images (train_limit {self.settings['train_limit']})"
        return f"{count:,} {stage.data} images"

    def _member_zero_source(self, stage: Stage) -> Path | None:
        """stage.member_zero_from's directory when its network counts as the stage's member 0: same exact recipe."""
        source = self.summary.get("stages", {}).get(stage.member_zero_from, {}) if stage.member_zero_from else {}
        directory = self.layout.stage(stage.member_zero_from)
        reusable = (source.get("settings") == dataclasses.asdict(self.train_settings(stage))
                    and source.get("network") == stage.network.describe() and (directory / MODEL).exists())
        return directory if reusable else None

    def _execute(self, stage: Stage, output: Path | None, node_fingerprint: str) -> dict:
        """Hand the stage its job (modelstage.StageJob: its settings, inputs and outputs, resolved here); its entry."""
        # TensorFlow loads only when a stage trains: a data-only run never starts it
        from mnist_cnn_progression.pipeline import modelstage
        member_zero = self._member_zero_source(stage)
        return modelstage.run(modelstage.StageJob(
            stage=stage, settings=tuple(self.train_settings(stage, k) for k in range(stage.members)),
            splits=self.load_splits(expanded=stage.data == "expanded"), output=output,
            output_name=self.layout.name(self.layout.stage(stage.id)),
            checkpoint_dir=self.layout.checkpoints(stage.id, node_fingerprint),
            tensorboard_dir=self.layout.tensorboard(stage.id), strategy=self.strategy, log=self.log,
            train_limit=self.settings["train_limit"], parallel_members=self.settings["parallel_members"],
            chain_epochs=self.chain_epochs(stage), member_zero_dir=member_zero,
            member_zero_entry=self.summary["stages"][stage.member_zero_from] if member_zero else {},
            bundle=self.layout.bundle if stage.run_bundle else None, data=self.data_provenance()))

    def _stage_fingerprint(self, stage: Stage) -> str:
        data = self._data_info()["digest"]
        expanded = self.manifest.get("expand", {}).get("fingerprint") if stage.data == "expanded" else None
        members = [dataclasses.asdict(self.train_settings(stage, k)) for k in range(stage.members)]
        recipe = {"stage": repr(stage), "settings": members, "data": data, "expanded": expanded,
                  "train_limit": self.settings["train_limit"]}
        if self.chain_epochs(stage):  # only then: the fingerprints of every other stage stay what they were
            recipe["chain_epochs"] = self.chain_epochs(stage)
        return fingerprint(recipe)

    def _agree_on_stage(self, stage: Stage, node_fingerprint: str | None, done: bool = False) -> tuple[bool, str]:
        """Multi-worker: every worker takes the chief's decision to skip or train a stage (collectives all join).

        Another worker passes no fingerprint: the decision reaches it once the
        chief has made it, that is once the chief's data, manifest and summary
        are written; it then reads them, and all check they mean the same stage.
        """
        if self._strategy is None:
            return done, node_fingerprint
        from mnist_cnn_progression.pipeline.strategy import chief_decides, sum_over_workers
        key = lambda text: int(text[:15], 16)
        done, chief_key = chief_decides(self._strategy, [int(done), key(node_fingerprint) if node_fingerprint else 0])
        if not done:
            if node_fingerprint is None and self.layout.data_info.exists():  # else: not shared
                self.summary, self.manifest = self._read_json(self.summary_path), self._read_json(self.manifest_path)
                node_fingerprint = self._stage_fingerprint(stage)
            if sum_over_workers(self._strategy, [not node_fingerprint or key(node_fingerprint) != chief_key])[0]:
                raise PipelineError(f"the workers differ in the settings or data of stage {stage.id}, or do not all "
                                    f"see the run directory: start every worker with the same command and the same "
                                    f"--run-dir on storage they all see.")
        return bool(done), node_fingerprint

    def _follow_stage(self, stage: Stage):
        """Another worker of a multi-worker run: it trains in step with the chief, from the chief's checkpoint."""
        done, node_fingerprint = self._agree_on_stage(stage, None)
        if done:
            self.log(f"[{stage.id}] done (the chief's run directory says so); skipped")
            return
        self._execute(stage, None, node_fingerprint)

    def _stage(self, stage: Stage):
        if self.task is not None:
            return self._follow_stage(stage)
        node_fingerprint = self._stage_fingerprint(stage)
        output = self.layout.stage(stage.id)
        entry = self.summary.get("stages", {}).get(stage.id, {})
        done, _ = self._agree_on_stage(stage, node_fingerprint, self._is_done(stage.id, node_fingerprint, output))
        if done:
            entry.pop("out_of_date", None)  # back on the data it was trained on
            entry["status"] = "done"
            self.log(f"[{stage.id}] done already (test accuracy {entry['test_accuracy']:.4f}); skipped")
            return
        if entry.get("status") == "out of date":
            self.log(f"[{stage.id}] out of date ({entry['out_of_date']}): retraining")
        self.log(f"[{stage.id}] {stage.network.describe()} on {self.trains_on(stage)}, "
                 f"reference {stage.reference:.2%}")
        asked, epochs = config.for_stage(self.settings, "epochs", stage.id), self.train_settings(stage).epochs
        if asked != "reference" and epochs > asked:
            self.log(f"  {epochs} epochs instead of {asked}: "
                     f"{self.training_images(stage)} training images need them for min_steps "
                     f"{config.for_stage(self.settings, 'min_steps', stage.id)}")
        started = time.perf_counter()
        entry = self._execute(stage, output, node_fingerprint)
        entry.update(wall_seconds=round(time.perf_counter() - started, 1), status="done",
                     trained_images=self.trained_images(stage), images_per_epoch=self.training_images(stage),
                     training_set_images=self.training_set_images(stage))
        self._trained_work += self.training_work(stage)
        self._trained_seconds += entry["wall_seconds"]
        entry["warning"] = stage_warning(entry, self._data_info().get("sample"))
        if entry["warning"]:
            self.log(f"WARNING: [{stage.id}] {entry['warning']}")
        self.summary.setdefault("stages", {})[stage.id] = entry
        self._record(stage.id, node_fingerprint,
                     reads=self._named(self.layout.expanded if stage.data == "expanded" else self.layout.data),
                     writes=self._named(output, *([self.layout.bundle] if stage.run_bundle else [])))
        self.log(f"[{stage.id}] test accuracy {entry['test_accuracy']:.4f} "
                 f"(reference {stage.reference:.4f}, {best_epochs(entry)})")
