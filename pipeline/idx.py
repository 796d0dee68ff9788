"""Reading and writing IDX files (the format MNIST ships in), gzip or raw.

Every check names the file, so a truncated download or a wrong file reads as
one sentence instead of a reshape error deep inside NumPy.
"""
import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

UBYTE = 0x08
MAGIC = {1: 0x00000801, 3: 0x00000803}  # labels, images


def read_idx(path, expected_ndim=None) -> np.ndarray:
    """Parse an IDX file of unsigned bytes into an array, checking magic, dimensions and length."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise PipelineError(f"{path.name} is not a readable gzip file ({error}).") from None
    if len(raw) < 4:
        raise PipelineError(f"{path.name} is too short to be an IDX file ({len(raw)} bytes).")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != UBYTE or ndim not in MAGIC:
        raise PipelineError(f"{path.name} has the wrong magic number {raw[:4].hex()} for an IDX file of bytes.")
    if expected_ndim is not None and ndim != expected_ndim:
        raise PipelineError(f"{path.name} holds a {ndim}-D array where a {expected_ndim}-D one was expected.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PipelineError(f"{path.name} is truncated inside its header.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    found = len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "longer than its header says"
        raise PipelineError(f"{path.name} is {problem}: its header promises {expected} bytes of data, found {found}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array as an IDX file (used by tests and tools that make mirrors)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    Path(path).write_bytes(gzip.compress(data) if compress else data)
