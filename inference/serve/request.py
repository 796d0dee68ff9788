"""A v2 inference request -> the images the networks take, or a 400 that says in one sentence what is wrong.

Everything is checked before any inference runs. One input per request:
`images`, FP32 [N, 28, 28, 1] in [0, 1] (the export contract), or `pictures`,
BYTES [N] of encoded PNG/JPEG/... files: raw bytes over gRPC, base64 strings
over REST (JSON cannot carry binary).
"""
import base64
import binascii
import math

import numpy as np
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, RequestInput

from inference.contract import INPUT_NAME
from inference.ensemble import check_images
from inference.pictures import InputError, picture_from_bytes

PICTURES = "pictures"
EXPECTED = "send images (FP32 [N, 28, 28, 1] in [0, 1]) or pictures (BYTES [N] of PNG/JPEG files)"


class BadRequest(MLServerError):
    """HTTP 400, gRPC INVALID_ARGUMENT; the message goes to the client as it is."""


def read_request(request: InferenceRequest, max_batch: int) -> tuple[np.ndarray, bool]:
    """(float32 [N, 28, 28, 1] images, whether they were made from pictures)."""
    names = [tensor.name for tensor in request.inputs]
    if not names:
        raise BadRequest(f"The request has no input: {EXPECTED}.")
    if len(names) > 1:
        raise BadRequest(f"The request has {len(names)} inputs ({', '.join(names)}); send exactly one.")
    tensor = request.inputs[0]
    if tensor.name not in (INPUT_NAME, PICTURES):
        raise BadRequest(f"Unknown input {tensor.name!r}: {EXPECTED}.")
    datatype = str(getattr(tensor.datatype, "value", tensor.datatype))  # an enum over REST, text over gRPC
    expected = "BYTES" if tensor.name == PICTURES else "FP32"
    if datatype != expected:
        raise BadRequest(f"{tensor.name} must be {expected}, not {datatype}.")
    batch = tensor.shape[0] if tensor.shape else 0
    if batch > max_batch:
        raise BadRequest(f"The batch holds {batch:,} images, more than the {max_batch:,} accepted (--max-batch).")
    if tensor.name == PICTURES:
        return read_pictures(tensor), True
    return read_images(tensor), False


def read_images(tensor: RequestInput) -> np.ndarray:
    try:  # a NumPy view of the raw bytes over gRPC (inference.serve.transport), a list over REST
        values = np.asarray(tensor.data.root, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadRequest("images must be a flat or nested list of numbers.") from None
    needed = math.prod(tensor.shape)
    if values.size != needed:
        raise BadRequest(f"images holds {values.size:,} values where its shape {tensor.shape} needs {needed:,}.")
    try:
        return check_images(values.reshape(tensor.shape))
    except ValueError as error:
        message = str(error)
        raise BadRequest(message[0].upper() + message[1:]) from None


def read_pictures(tensor: RequestInput) -> np.ndarray:
    items = list(tensor.data.root)
    if len(tensor.shape) != 1 or tensor.shape[0] != len(items):
        raise BadRequest(f"pictures must have shape [N] and hold N pictures, not shape {tensor.shape} "
                         f"with {len(items)}.")
    images = []
    for index, item in enumerate(items):
        try:
            images.append(picture_from_bytes(item if isinstance(item, bytes) else from_base64(item)))
        except InputError as error:
            raise BadRequest(f"pictures[{index}]: {error}") from None
    return np.stack(images)[..., None] if images else np.zeros((0, 28, 28, 1), np.float32)


def from_base64(text) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InputError("The picture is not base64 text; over REST each picture is a base64 string.") from None
