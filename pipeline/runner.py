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

The nodes and what each needs are the table in pipeline.stages. The data
steps write through pipeline.datasteps; a stage's recipe (its settings per
network, and its fingerprint) is resolved by pipeline.recipe; a model stage
is handed a resolved job and returns its entry (pipeline.modelstage), which
the runner records. TensorFlow's modules (strategy, modelstage) are imported
where first used: the argument check and a run that only prepares data never
load TensorFlow.
"""
import importlib.metadata
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from mnist_cnn_progression.inference.files import write_json
from mnist_cnn_progression.inference.run_layout import MODEL, RunLayout
from mnist_cnn_progression.pipeline import config, precision, recipe
from mnist_cnn_progression.pipeline.datasteps import RunData
from mnist_cnn_progression.pipeline.rundir import clean_unfinished, fingerprint, run_lock
from mnist_cnn_progression.pipeline.errors import PipelineError, did_you_mean
from mnist_cnn_progression.pipeline.progress import minutes
from mnist_cnn_progression.pipeline.precision import Precision
from mnist_cnn_progression.pipeline.recipe import Recipe
from mnist_cnn_progression.pipeline.stages import NODE_BY_ID, NODES, STAGE_BY_ID, STEPS, Stage

STEP_IDS = [step.id for step in STEPS]
DEFAULT_NODES = [node.id for node in NODES if not (isinstance(node, Stage) and node.optional)]
SOURCE_COMMIT = Path(__file__).with_name("source_commit.txt")  # in a plain install (setup.py)
NOT_FROM_GIT = "not from a git checkout"
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
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "cpu_bfloat16": ", ".join(precision.Hardware(precision.cpu_flags()).bf16_flags()) or "none"}


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
        self.data = RunData(self.layout, log)
        self.started = time.perf_counter()  # for the whole-run line
        self._trained_macs, self._trained_seconds = 0, 0.0  # the stages this run trained: their cost and time
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

        The estimate prices each stage still to train by its multiply-accumulates
        (Recipe.training_macs), at the rate the stages trained so far in this run achieved.
        """
        position = stage_ids.index(current)
        left = [self.recipe(STAGE_BY_ID[i]) for i in stage_ids[position:]]
        left = [r for r in left if not self._is_done(r.stage.id, r.fingerprint(), self.layout.stage(r.stage.id))]
        macs = sum(self.training_macs(r) for r in left)
        estimate = (f"~{minutes(macs * self._trained_seconds / self._trained_macs)} left" if self._trained_macs
                    else "time left known after the first stage")
        self.log(f"[run] stage {position + 1} of {len(stage_ids)} ({current}); "
                 f"{minutes(time.perf_counter() - self.started)} so far, {estimate}")

    def _member_zero_first(self, stage_recipe: Recipe) -> int:
        """The first member the stage trains itself: 1 when its member 0 is another stage's network (trained there)."""
        return 1 if self._member_zero_source(stage_recipe) else 0

    def training_macs(self, stage_recipe: Recipe) -> int:
        """What the stage's own training costs (Recipe.training_macs), not counting a member 0 trained elsewhere."""
        return stage_recipe.training_macs(self._member_zero_first(stage_recipe))

    def images_seen(self, stage_recipe: Recipe) -> int:
        """The stage's training images counted once per network and epoch (Recipe.images_seen).

        A voting stage's member 0 is another stage's network when both have
        the same recipe (Stage.member_zero_from): trained once, it counts there.
        """
        return stage_recipe.images_seen(self._member_zero_first(stage_recipe))

    def _download(self):
        output = self.layout.data
        previous = self.manifest.get("download", {})
        # "auto" takes an already-prepared cache as it is; a named source must match the one recorded.
        if output.exists() and not self.force and previous and self.data_spec in ("auto", previous.get("source")):
            self.log(f"[download] done already ({previous.get('source')}); skipped")
            return
        self.log(f"[download] reading MNIST from {self.data_spec}")
        info = self.data.download(self.data_spec)
        if info["warning"]:
            self.log(f"WARNING: {info['warning']}")
        if previous.get("fingerprint") not in (None, info["digest"]):
            self._mark_out_of_date(f"trained on the data of {previous.get('source')}, not the data now in data/")
        self.summary["data"] = {**info, "expanded_train": None}
        self.manifest.pop("expand", None)  # new data: whatever was expanded from the old is stale
        self._record("download", info["digest"], reads=[self.data_spec], writes=self._named(self.layout.data),
                     source=self.data_spec)
        self.log(f"[download] {info['train']} / {info['validation']} / {info['test']} images from {info['source']}")

    def _mark_out_of_date(self, why: str):
        """New data: every finished stage (and so the bundle and report) was trained on the old; never mix them."""
        stale = [stage_id for stage_id, entry in self.summary.get("stages", {}).items()
                 if entry.get("status") == "done"]
        for stage_id in stale:
            self.summary["stages"][stage_id].update(status="out of date", out_of_date=why)
        if stale:
            self.log(f"[download] the data changed: {', '.join(stale)} (with the bundle and report built from them) "
                     f"were trained on the old data and are marked out of date; each retrains when run")

    def _expand(self):
        node_fingerprint = fingerprint({"data": self.data.info()["digest"], "seed": self.settings["seed"]})
        if self._is_done("expand", node_fingerprint, self.layout.expanded):
            self.log("[expand] done already; skipped")
            return
        info = self.data.expand(self.settings["seed"])
        self.summary.setdefault("data", {})["expanded_train"] = info["count"]
        self._record("expand", node_fingerprint, reads=self._named(self.layout.data),
                     writes=self._named(self.layout.expanded))
        self.log(f"[expand] {info['count']} training images")

    def _report(self):
        from mnist_cnn_progression.pipeline.report import write_report
        write_report(self.run_dir)
        self.log(f"[report] {self.layout.report / 'report.html'}")

    # -- model stages -----------------------------------------------------------------------------
    def recipe(self, stage: Stage, chief_policy: str | None = None) -> Recipe:
        """The stage's recipe in this run: its settings per network and what its fingerprint covers.

        chief_policy: in a multi-worker run, the policy the chief's `auto` chose, which the other workers follow.
        """
        expanded = self.manifest.get("expand", {}).get("fingerprint")
        return recipe.resolve(stage, self.settings, self.data.info(), expanded, self._precision(stage, chief_policy))

    def _precision(self, stage: Stage, chief_policy: str | None) -> Precision:
        asked = config.for_stage(self.settings, "precision", stage.id)
        if asked == "auto" and chief_policy:
            chosen = Precision(chief_policy, "auto, as the chief chose")
        else:
            chosen = precision.resolve(asked, precision.this_machine() if asked == "auto" else precision.Hardware())
        return chosen.ending_in_float32(int(config.for_stage(self.settings, "float32_last_epochs", stage.id)))

    def _member_zero_source(self, stage_recipe: Recipe) -> Path | None:
        """stage.member_zero_from's directory when its network counts as the stage's member 0: same exact recipe."""
        stage = stage_recipe.stage
        source = self.summary.get("stages", {}).get(stage.member_zero_from, {}) if stage.member_zero_from else {}
        directory = self.layout.stage(stage.member_zero_from)
        reusable = (source.get("settings") == config.as_record(stage_recipe.settings[0])
                    and source.get("network") == stage.network.describe() and (directory / MODEL).exists())
        return directory if reusable else None

    def _execute(self, stage_recipe: Recipe, output: Path | None) -> dict:
        """Hand the stage its job (modelstage.StageJob: its recipe, inputs and outputs, resolved here); its entry."""
        # TensorFlow loads only when a stage trains: a data-only run never starts it
        from mnist_cnn_progression.pipeline import modelstage
        stage = stage_recipe.stage
        member_zero = self._member_zero_source(stage_recipe)
        return modelstage.run(modelstage.StageJob(
            stage=stage, settings=stage_recipe.settings,
            splits=self.data.load(expanded=stage.data == "expanded"), output=output,
            output_name=self.layout.name(self.layout.stage(stage.id)),
            checkpoint_dir=self.layout.checkpoints(stage.id, stage_recipe.fingerprint()),
            tensorboard_dir=self.layout.tensorboard(stage.id), strategy=self.strategy, log=self.log,
            train_limit=self.settings["train_limit"], parallel_members=self.settings["parallel_members"],
            chain_epochs=stage_recipe.chain_epochs, member_zero_dir=member_zero,
            member_zero_entry=self.summary["stages"][stage.member_zero_from] if member_zero else {},
            bundle=self.layout.bundle if stage.run_bundle else None, data=self.data.provenance()))

    def _agree_on_stage(self, stage: Stage, stage_recipe: Recipe | None, done: bool = False) -> tuple[bool, Recipe]:
        """Multi-worker: every worker takes the chief's decision to skip or train a stage (collectives all join).

        Another worker passes no recipe: the decision reaches it once the
        chief has made it, that is once the chief's data, manifest and summary
        are written; it then reads them, and all check they mean the same stage.
        What the chief's `auto` precision chose comes with the decision: a worker
        on other hardware follows it (unlike machines must not split a cluster).
        """
        if self._strategy is None:
            return done, stage_recipe
        from mnist_cnn_progression.pipeline.strategy import chief_decides, sum_over_workers
        key = lambda recipe_: int(recipe_.fingerprint()[:15], 16)
        policy = precision.POLICIES.index(stage_recipe.precision.policy) if stage_recipe else 0
        done, chief_key, chief_policy = chief_decides(
            self._strategy, [int(done), key(stage_recipe) if stage_recipe else 0, policy])
        if not done:
            if stage_recipe is None and self.layout.data_info.exists():  # else: not shared
                self.summary, self.manifest = self._read_json(self.summary_path), self._read_json(self.manifest_path)
                stage_recipe = self.recipe(stage, chief_policy=precision.POLICIES[chief_policy])
            if sum_over_workers(self._strategy, [not stage_recipe or key(stage_recipe) != chief_key])[0]:
                raise PipelineError(f"the workers differ in the settings or data of stage {stage.id}, or do not all "
                                    f"see the run directory: start every worker with the same command and the same "
                                    f"--run-dir on storage they all see.")
        return bool(done), stage_recipe

    def _follow_stage(self, stage: Stage):
        """Another worker of a multi-worker run: it trains in step with the chief, from the chief's checkpoint."""
        done, stage_recipe = self._agree_on_stage(stage, None)
        if done:
            self.log(f"[{stage.id}] done (the chief's run directory says so); skipped")
            return
        self._execute(stage_recipe, None)

    def _stage(self, stage: Stage):
        if self.task is not None:
            return self._follow_stage(stage)
        stage_recipe = self.recipe(stage)
        node_fingerprint = stage_recipe.fingerprint()
        output = self.layout.stage(stage.id)
        entry = self.summary.get("stages", {}).get(stage.id, {})
        done, _ = self._agree_on_stage(stage, stage_recipe, self._is_done(stage.id, node_fingerprint, output))
        if done:
            entry.pop("out_of_date", None)  # back on the data it was trained on
            entry["status"] = "done"
            self.log(f"[{stage.id}] done already (test accuracy {entry['test_accuracy']:.4f}); skipped")
            return
        if entry.get("status") == "out of date":
            self.log(f"[{stage.id}] out of date ({entry['out_of_date']}): retraining")
        self.log(f"[{stage.id}] {stage.network.describe()} on {stage_recipe.trains_on()}, "
                 f"reference {stage.reference:.2%}")
        self.log(f"  precision {stage_recipe.precision.describe()}")
        asked, epochs = config.for_stage(self.settings, "epochs", stage.id), stage_recipe.settings[0].epochs
        if asked != "reference" and epochs > asked:
            self.log(f"  {epochs} epochs instead of {asked}: "
                     f"{stage_recipe.epoch_images} training images need them for min_steps "
                     f"{config.for_stage(self.settings, 'min_steps', stage.id)}")
        started = time.perf_counter()
        entry = self._execute(stage_recipe, output)
        entry.update(wall_seconds=round(time.perf_counter() - started, 1), status="done",
                     trained_images=self.images_seen(stage_recipe), precision=stage_recipe.precision.as_entry(),
                     images_per_epoch=stage_recipe.epoch_images, training_set_images=stage_recipe.set_images)
        self._trained_macs += self.training_macs(stage_recipe)
        self._trained_seconds += entry["wall_seconds"]
        entry["warning"] = stage_warning(entry, self.data.info().get("sample"))
        if entry["warning"]:
            self.log(f"WARNING: [{stage.id}] {entry['warning']}")
        self.summary.setdefault("stages", {})[stage.id] = entry
        self._record(stage.id, node_fingerprint,
                     reads=self._named(self.layout.expanded if stage.data == "expanded" else self.layout.data),
                     writes=self._named(output, *([self.layout.bundle] if stage.run_bundle else [])))
        self.log(f"[{stage.id}] test accuracy {entry['test_accuracy']:.4f} "
                 f"(reference {stage.reference:.4f}, {best_epochs(entry)})")
