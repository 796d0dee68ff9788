"""The IDX reader: good files parse; bad ones are named in one sentence."""
import gzip

import numpy as np
import pytest

from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.idx import read_idx, write_idx


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path, images, compress):
    write_idx(tmp_path / "x-idx3-ubyte", images, compress=compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte", expected_ndim=3), images)


def test_labels_are_one_dimensional(tmp_path):
    write_idx(tmp_path / "labels", np.arange(10, dtype=np.uint8))
    assert read_idx(tmp_path / "labels", expected_ndim=1).tolist() == list(range(10))


def test_truncated_file_is_named(tmp_path, images):
    write_idx(tmp_path / "train-images", images, compress=False)
    raw = (tmp_path / "train-images").read_bytes()
    (tmp_path / "train-images").write_bytes(raw[:-100])
    with pytest.raises(PipelineError, match=r"train-images is truncated: its header promises 5488 bytes of data, found 5388"):
        read_idx(tmp_path / "train-images")


def test_truncated_gzip_is_named(tmp_path, images):
    write_idx(tmp_path / "t.gz", images)
    raw = (tmp_path / "t.gz").read_bytes()
    (tmp_path / "t.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PipelineError, match=r"t.gz is not a readable gzip file"):
        read_idx(tmp_path / "t.gz")


def test_a_wrong_magic_number_is_refused(tmp_path):
    (tmp_path / "bad").write_bytes(gzip.compress(b"\x12\x34\x08\x03" + bytes(100)))
    with pytest.raises(PipelineError, match="wrong magic number 12340803"):
        read_idx(tmp_path / "bad")


def test_float_values_are_refused_as_not_mnist_bytes(tmp_path):
    (tmp_path / "bad").write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + bytes(100)))
    with pytest.raises(PipelineError, match="bad holds float32 values, not the unsigned bytes"):
        read_idx(tmp_path / "bad")


def test_longer_than_header_says(tmp_path, images):
    write_idx(tmp_path / "long", images, compress=False)
    (tmp_path / "long").write_bytes((tmp_path / "long").read_bytes() + b"extra")
    with pytest.raises(PipelineError, match="long is longer than its header says"):
        read_idx(tmp_path / "long")


def test_labels_where_images_expected(tmp_path):
    write_idx(tmp_path / "labels", np.arange(10, dtype=np.uint8))
    with pytest.raises(PipelineError, match="1-D array where a 3-D one was expected"):
        read_idx(tmp_path / "labels", expected_ndim=3)
