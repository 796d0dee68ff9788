"""A v2 inference request -> the images the networks take, or a 400 that says in one sentence what is wrong.

Everything is checked before any inference runs. One input per request:
`images`, FP32 [N, 28, 28, 1] in [0, 1] (the export contract), or `pictures`,
BYTES [N] of encoded PNG/JPEG/... files: raw bytes over gRPC, base64 strings
over REST (JSON cannot carry binary). A picture that cannot be read fails
alone: its row carries its sentence in the `error` output and no prediction
(see unanswered), and the other pictures are answered.
"""
import base64
import binascii
import math
from dataclasses import replace

import numpy as np
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, RequestInput

from mnist_cnn_progression.inference.contract import IMAGE_SHAPE, INPUT_NAME
from mnist_cnn_progression.inference.ensemble import Prediction, check_images
from mnist_cnn_progression.inference.pictures import InputError, picture_from_bytes

PICTURES = "pictures"
ERROR = "error"
EXPECTED = "send images (FP32 [N, 28, 28, 1] in [0, 1]) or pictures (BYTES [N] of PNG/JPEG files)"


class BadRequest(MLServerError):
    """HTTP 400, gRPC INVALID_ARGUMENT; the message goes to the client as it is."""


def read_request(request: InferenceRequest, max_batch: int) -> tuple[np.ndarray, list[str] | None]:
    """(float32 [N, 28, 28, 1] images, for pictures each one's error ("" when it was read), None for images)."""
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
        return read_pictures(tensor)
    return read_images(tensor), None


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


def read_pictures(tensor: RequestInput) -> tuple[np.ndarray, list[str]]:
    """The pictures made MNIST-like, and each one's error: a picture that cannot be read is a black frame."""
    items = list(tensor.data.root)
    if len(tensor.shape) != 1 or tensor.shape[0] != len(items):
        raise BadRequest(f"pictures must have shape [N] and hold N pictures, not shape {tensor.shape} "
                         f"with {len(items)}.")
    images, errors = np.zeros((len(items), *IMAGE_SHAPE), np.float32), [""] * len(items)
    for index, item in enumerate(items):
        try:
            images[index, ..., 0] = picture_from_bytes(item if isinstance(item, bytes) else from_base64(item))
        except InputError as error:
            errors[index] = str(error)
    return images, errors


def unanswered(prediction: Prediction, errors: list[str] | None) -> Prediction:
    """The rows of pictures that could not be read hold no prediction: class -1, zero votes and probabilities
    (so confidence 0 and no warning), whatever the networks made of the black frame in their place."""
    failed = np.array([bool(error) for error in errors or ()], bool)
    if not failed.any():
        return prediction
    return replace(prediction, classes=np.where(failed, -1, prediction.classes),
                   votes=np.where(failed[:, None], 0, prediction.votes),
                   probabilities=np.where(failed[:, None], 0, prediction.probabilities).astype(np.float32))


def from_base64(text) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InputError("The picture is not base64 text; over REST each picture is a base64 string.") from None
