"""Where a run directory keeps what: the one place that knows its paths.

The pipeline writes them and the deployable side reads some of them (a
bundle's run, its data.json), so this module is plain pathlib, no TensorFlow.

    summary.json, manifest.json
    data/data.json, data/<split>.npy      expanded/expanded.json, expanded/images_000.npy ...
    stages/<id>/model.keras, history.csv, test_probabilities.npy, evaluation.json, export/
    stages/<id>/members/member_<k>.keras, history_member_<k>.csv, member_probabilities.npy (a voting stage)
    bundle/ (the run's), stages/<id>/bundle/ (a voting stage's own)    report/    checkpoints/    tensorboard/
"""
from pathlib import Path

# The files of a stage directory.
MODEL, HISTORY, EVALUATION, EXPORT = "model.keras", "history.csv", "evaluation.json", "export"
TEST_PROBABILITIES, MEMBER_PROBABILITIES, MEMBERS, BUNDLE = (
    "test_probabilities.npy", "member_probabilities.npy", "members", "bundle")


def split_file(name: str) -> str:
    """A prepared split's file in data/: name is one of train/validation/test + _images/_labels."""
    return f"{name}.npy"


def member_model(k: int) -> str:
    return f"{MEMBERS}/member_{k}.keras"


def member_history(k: int) -> str:
    return f"history_member_{k}.csv"


class RunLayout:
    """The paths of the run directory `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.summary, self.manifest = self.root / "summary.json", self.root / "manifest.json"
        self.data, self.expanded, self.cache = self.root / "data", self.root / "expanded", self.root / "cache"
        self.data_info = self.data / "data.json"
        self.bundle, self.report = self.root / BUNDLE, self.root / "report"

    def stage(self, stage_id: str) -> Path:
        return self.root / "stages" / stage_id

    def checkpoints(self, stage_id: str, fingerprint: str) -> Path:
        return self.root / "checkpoints" / f"{stage_id}-{fingerprint[:12]}"

    def tensorboard(self, stage_id: str) -> Path:
        return self.root / "tensorboard" / stage_id

    def name(self, path: Path) -> str:
        """A directory as the run's own files name it: relative to the run, "stages/conv1"."""
        return path.relative_to(self.root).as_posix()

    @classmethod
    def of_bundle(cls, bundle: Path) -> "RunLayout":
        """The run holding a bundle: <run>/bundle/, or <run>/stages/<id>/bundle/ for a voting stage's own."""
        bundle = Path(bundle)
        return cls(bundle.parents[2] if bundle.parent.parent.name == "stages" else bundle.parent)
