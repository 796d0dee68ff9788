"""Data sources: a mirror over real HTTP on 127.0.0.1, file:// and directories, tfds (mocked), the sample, auto."""
import hashlib
import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn_progression.pipeline import sources
from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
needs_mnist = pytest.mark.skipif(not SHARED_MNIST.exists(), reason=f"full MNIST mirror not found at {SHARED_MNIST}")


def make_mirror(directory: Path, train: int = 60, test: int = 20, sums: bool = True) -> dict:
    """Four small IDX files (and a SHA256SUMS) laid out like the official mirror."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, train, dtype=np.uint8),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, test, dtype=np.uint8)}
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / name, array)
    if sums:
        (directory / "SHA256SUMS").write_text("".join(
            f"{hashlib.sha256((directory / n).read_bytes()).hexdigest()}  {n}\n" for n in arrays))
    return arrays


class MirrorServer:
    """A real HTTP server on 127.0.0.1 serving a directory, with faults to order."""

    def __init__(self, root: Path):
        self.root, self.truncate, self.requests = root, {}, []  # truncate: file name -> how many times
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(name)
                path = server.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.truncate.get(name, 0) > 0
                server.truncate[name] = server.truncate.get(name, 0) - 1
                self.wfile.write(body[: len(body) // 2] if cut else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    arrays = make_mirror(tmp_path / "mirror")
    mirror = MirrorServer(tmp_path / "mirror")
    mirror.arrays = arrays
    yield mirror
    mirror.close()


def leftovers(directory: Path) -> list:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")] if directory.exists() else []


def test_mirror_over_http_gives_the_reference_split(server, tmp_path):
    splits = sources.from_mirror(server.url, tmp_path / "cache")
    np.testing.assert_array_equal(splits.test_images, server.arrays["t10k-images-idx3-ubyte.gz"])
    # Small files: all 60 training images fall in the first 50,000, none validate.
    assert len(splits.train_images) == 60 and len(splits.validation_images) == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(sources.FILES)
    assert not leftovers(tmp_path / "cache")


def a_checksum_mismatch(server) -> str:
    sums = (server.root / "SHA256SUMS").read_text().replace(
        hashlib.sha256((server.root / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest(), "0" * 64)
    (server.root / "SHA256SUMS").write_text(sums)
    return "t10k-labels-idx1-ubyte.gz"


def a_transfer_cut_short_twice(server) -> str:
    server.truncate["train-images-idx3-ubyte.gz"] = 2
    return "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("fault, message", [
    (a_checksum_mismatch, "t10k-labels-idx1-ubyte.gz from .* failed its SHA-256 check twice"),
    (a_transfer_cut_short_twice, "transfer of .*train-images-idx3-ubyte.gz was cut short"),
])
def test_a_file_that_fails_twice_is_reported_and_leaves_nothing(server, tmp_path, fault, message):
    """Each file is fetched again once; a second failure is one sentence, and nothing half-written is kept."""
    name = fault(server)
    with pytest.raises(PipelineError, match=message):
        sources.from_mirror(server.url, tmp_path / "cache")
    assert server.requests.count(name) == 2
    assert not (tmp_path / "cache" / name).exists()
    assert not leftovers(tmp_path / "cache")


def test_a_transfer_cut_short_once_is_retried(server, tmp_path):
    server.truncate["train-images-idx3-ubyte.gz"] = 1
    splits = sources.from_mirror(server.url, tmp_path / "cache")
    assert server.requests.count("train-images-idx3-ubyte.gz") == 2
    np.testing.assert_array_equal(splits.train_images, server.arrays["train-images-idx3-ubyte.gz"][:50_000])


def test_the_mirror_check_keeps_its_timeout_when_name_resolution_hangs(monkeypatch):
    """A resolver that hangs for 8 s: the answer comes after the 0.5 s timeout, and exiting waits for nothing."""
    script = ("import socket, time, sys\n"
              "from mnist_cnn_progression.pipeline import sources\n"
              "socket.create_connection = lambda *a, **k: time.sleep(8)\n"
              "started = time.perf_counter()\n"
              "print(sources.answers('https://mirror.example/', timeout=0.5), time.perf_counter() - started < 2)\n")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.split() == ["False", "True"], result.stderr
    assert time.perf_counter() - started < 6  # the process exits without waiting out the 8 s resolver


def test_mirror_without_manifest_is_checked_against_the_official_digests(tmp_path):
    make_mirror(tmp_path / "mirror", sums=False)
    mirror = MirrorServer(tmp_path / "mirror")
    try:
        with pytest.raises(PipelineError, match="failed its SHA-256 check twice"):
            sources.from_mirror(mirror.url, tmp_path / "cache")  # our random files are not the official ones
    finally:
        mirror.close()


def test_unreachable_url_is_one_sentence(tmp_path):
    # No manifest answers, so the official digests are used and the first data file is the one that fails.
    with pytest.raises(PipelineError, match=r"Could not fetch http://127.0.0.1:9/train-images-idx3-ubyte.gz"):
        sources.from_mirror("http://127.0.0.1:9/", tmp_path / "cache")


def test_directory_checks_its_manifest(tmp_path):
    make_mirror(tmp_path / "d")
    assert len(sources.from_directory(tmp_path / "d").test_labels) == 20
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", np.zeros(20, np.uint8))
    with pytest.raises(PipelineError, match="t10k-labels-idx1-ubyte.gz does not match the SHA-256"):
        sources.from_directory(tmp_path / "d")


def test_directory_of_raw_idx_files(tmp_path):
    arrays = make_mirror(tmp_path / "gz", sums=False)
    (tmp_path / "raw").mkdir()
    for name, array in arrays.items():
        write_idx(tmp_path / "raw" / name.removesuffix(".gz"), array, compress=False)
    np.testing.assert_array_equal(sources.from_directory(tmp_path / "raw").train_labels,
                                  arrays["train-labels-idx1-ubyte.gz"])


def test_wrong_image_size_is_refused(tmp_path):
    make_mirror(tmp_path / "d", sums=False)
    write_idx(tmp_path / "d" / "t10k-images-idx3-ubyte.gz", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(PipelineError, match=r"test_images of shape \(20, 32, 32\).*not uint8 images of 28x28"):
        sources.from_directory(tmp_path / "d")


def test_sample_is_real_and_stratified():
    splits = sources.from_sample()
    assert (len(splits.train_images), len(splits.validation_images), len(splits.test_images)) == (4000, 500, 500)
    for labels, per_class in ((splits.train_labels, 400), (splits.validation_labels, 50), (splits.test_labels, 50)):
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
    assert splits.sample and "not comparable" in splits.warning
    assert 80 < splits.train_images.mean() / 255 * 784 < 200  # digits: about 100-150 "ink" pixels each


def test_auto_falls_back_to_the_sample_in_seconds_when_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.setattr(sources, "DEFAULT_MIRROR", "http://127.0.0.1:9/")  # nothing listens on port 9
    messages = []
    started = time.perf_counter()
    splits = sources.load("auto", tmp_path / "cache", log=messages.append)
    assert time.perf_counter() - started < 10
    assert splits.sample and any("offline" in m for m in messages)


def test_auto_uses_the_mirror_named_by_the_environment(server, monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_MIRROR", server.url)
    assert sources.load("auto", tmp_path / "cache", log=lambda m: None).source == server.url


def test_unknown_source_is_one_sentence(tmp_path):
    with pytest.raises(PipelineError, match="missing: no such directory"):
        sources.load(str(tmp_path / "missing"), tmp_path)


def test_tfds_path_with_mock_data():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=12):  # mock_data ignores split slicing: 12 in every split
        splits = sources.from_tfds()
    assert splits.source == "tfds" and splits.train_images.shape == (12, 28, 28)
    assert splits.train_images.dtype == np.uint8 and splits.test_labels.max() < 10


def test_tfds_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "DEFAULT_MIRROR", "http://127.0.0.1:9/")
    started = time.perf_counter()
    with pytest.raises(PipelineError, match="no prepared copy of mnist"):
        sources.from_tfds(data_dir=str(tmp_path))
    assert time.perf_counter() - started < 30


@needs_mnist
@pytest.mark.parametrize("spec", [str(SHARED_MNIST), SHARED_MNIST.as_uri()])
def test_full_mnist_from_the_shared_mirror(spec, tmp_path):
    splits = sources.load(spec, tmp_path / "cache")
    counts = [len(splits.arrays[f"{p}_labels"]) for p in ("train", "validation", "test")]
    assert counts == [50_000, 10_000, 10_000]
    assert splits.train_labels[:5].tolist() == [5, 0, 4, 1, 9]  # the official order's first digits


@needs_mnist
def test_the_reference_split_is_the_official_order_cut_at_50000(tmp_path):
    from mnist_cnn_progression.pipeline.idx import read_idx
    splits = sources.load(str(SHARED_MNIST), tmp_path / "cache")
    official = {name: read_idx(SHARED_MNIST / name, expected_ndim=3 if "images" in name else 1)
                for name in sources.FILES}
    train_images, train_labels = official["train-images-idx3-ubyte.gz"], official["train-labels-idx1-ubyte.gz"]
    np.testing.assert_array_equal(splits.train_images, train_images[:50_000])
    np.testing.assert_array_equal(splits.train_labels, train_labels[:50_000])
    np.testing.assert_array_equal(splits.validation_images, train_images[50_000:])
    np.testing.assert_array_equal(splits.validation_labels, train_labels[50_000:])
    np.testing.assert_array_equal(splits.test_images, official["t10k-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(splits.test_labels, official["t10k-labels-idx1-ubyte.gz"])


def test_tfds_path_takes_train_50000_then_the_rest_then_test(monkeypatch):
    """tfds.load is asked for the three slices in that order, and each lands in its own part."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    asked = []

    def fake_load(name, split, **options):
        asked.append((name, split, options["as_supervised"]))
        return [tf.data.Dataset.from_tensor_slices((np.full((n, 28, 28, 1), k, np.uint8), np.full(n, k, np.int64)))
                for k, n in enumerate((7, 3, 5), start=1)]

    monkeypatch.setattr(tfds, "load", fake_load)
    splits = sources.from_tfds()
    assert asked == [("mnist", ["train[:50000]", "train[50000:]", "test"], True)]
    for part, (label, count) in zip(("train", "validation", "test"), ((1, 7), (2, 3), (3, 5))):
        assert splits.arrays[f"{part}_labels"].tolist() == [label] * count
        assert (splits.arrays[f"{part}_images"] == label).all() and splits.arrays[f"{part}_images"].shape[1:] == (28, 28)
