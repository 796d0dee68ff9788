"""IDX files (the format MNIST ships in): the one reader, for the pipeline's data and for files people send.

It reads no more than the header declares, and the caller's check sees the
declared shape and type before any data is read, so a huge or hostile file
costs nothing before it is refused. NumPy only: no TensorFlow.
"""
import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_DIMENSIONS = 4
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """What is wrong with an IDX file, as a sentence's predicate: the caller names the file ("... is truncated")."""


class IdxFileError(ValueError):
    """What is wrong with an IDX file on disk, as one sentence naming it."""


def looks_like_idx(head: bytes) -> bool:
    """Whether the first four bytes are an IDX header: two zero bytes, a known type, 1 to 4 dimensions."""
    return len(head) >= 4 and head[:2] == b"\0\0" and head[2] in TYPES and 1 <= head[3] <= MAX_DIMENSIONS


def read_idx(stream: BinaryIO, check: Callable[[tuple, np.dtype], None] | None = None) -> np.ndarray:
    """The array of an IDX stream (open gzipped files with gzip.open); check(shape, dtype) may refuse it unread."""
    header = stream.read(4)
    if not looks_like_idx(header):
        raise IdxError(f"has the wrong magic number {header.hex() or 'of an empty file'} for an IDX file")
    dimensions = stream.read(4 * header[3])
    if len(dimensions) < 4 * header[3]:
        raise IdxError("is truncated inside its header")
    shape = struct.unpack(f">{header[3]}I", dimensions)
    dtype = np.dtype(TYPES[header[2]])
    if check:
        check(shape, dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    data = stream.read(size + 1)
    if len(data) < size:
        raise IdxError(f"is truncated: its header promises {size} bytes of data, found {len(data)}")
    if len(data) > size:
        raise IdxError(f"is longer than its header says ({size} bytes of data)")
    return np.frombuffer(data, dtype).reshape(shape)


def read_mnist_idx(path, expected_ndim: int | None = None) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's own), gzip or raw; IdxFileError, one sentence naming it, otherwise."""
    path = Path(path)

    def mnist_bytes(shape: tuple, dtype: np.dtype) -> None:
        if dtype != np.uint8:
            raise IdxFileError(f"{path.name} holds {dtype.name} values, not the unsigned bytes of MNIST's IDX files.")
        if expected_ndim is not None and len(shape) != expected_ndim:
            raise IdxFileError(f"{path.name} holds a {len(shape)}-D array where a {expected_ndim}-D one was expected.")
    try:
        with open(path, "rb") as file:
            gzipped = file.read(2) == GZIP_MAGIC
        with (gzip.open if gzipped else open)(path, "rb") as stream:
            return read_idx(stream, check=mnist_bytes)
    except IdxError as error:
        raise IdxFileError(f"{path.name} {error}.") from None
    except (OSError, EOFError, zlib.error) as error:
        raise IdxFileError(f"{path.name} is not a readable gzip file ({error}).") from None
