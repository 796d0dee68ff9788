"""Reading and writing IDX files (the format MNIST ships in), gzip or raw.

Every check names the file, so a truncated download or a wrong file reads as
one sentence instead of a reshape error deep inside NumPy.
"""
import gzip
import struct
from pathlib import Path

import numpy as np

from mnist_cnn_progression.inference.idx import IdxFileError, read_mnist_idx
from mnist_cnn_progression.pipeline.errors import PipelineError

UBYTE = 0x08


def read_idx(path, expected_ndim=None) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's own), gzip or raw (inference.idx.read_mnist_idx), as a PipelineError."""
    try:
        return read_mnist_idx(path, expected_ndim)
    except IdxFileError as error:
        raise PipelineError(str(error)) from None


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array as an IDX file (used by tests and tools that make mirrors)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    Path(path).write_bytes(gzip.compress(data) if compress else data)
