"""Reading and writing IDX files (the format MNIST ships in), gzip or raw.

Every check names the file, so a truncated download or a wrong file reads as
one sentence instead of a reshape error deep inside NumPy.
"""
import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from mnist_cnn_progression.inference.idx import GZIP_MAGIC, IdxError, read_idx as read_idx_stream
from mnist_cnn_progression.pipeline.errors import PipelineError

UBYTE = 0x08


def read_idx(path, expected_ndim=None) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's own), gzip or raw, through the one IDX reader (inference.idx)."""
    path = Path(path)

    def mnist_bytes(shape: tuple, dtype: np.dtype) -> None:
        if dtype != np.uint8:
            raise PipelineError(f"{path.name} holds {dtype.name} values, not the unsigned bytes of MNIST's IDX files.")
        if expected_ndim is not None and len(shape) != expected_ndim:
            raise PipelineError(f"{path.name} holds a {len(shape)}-D array where a {expected_ndim}-D one was expected.")
    try:
        with open(path, "rb") as file:
            gzipped = file.read(2) == GZIP_MAGIC
        with (gzip.open if gzipped else open)(path, "rb") as stream:
            return read_idx_stream(stream, check=mnist_bytes)
    except IdxError as error:
        raise PipelineError(f"{path.name} {error}.") from None
    except (OSError, EOFError, zlib.error) as error:
        raise PipelineError(f"{path.name} is not a readable gzip file ({error}).") from None


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array as an IDX file (used by tests and tools that make mirrors)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    Path(path).write_bytes(gzip.compress(data) if compress else data)
