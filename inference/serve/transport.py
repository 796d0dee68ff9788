"""What MLServer 1.7.1's transports need for this server: a REST body limit, plain 400s, a NumPy path over gRPC.

- REST: a request body over the limit gets a 400 before it is parsed (a gzip
  body is measured after decompression); a body that is not an inference
  request gets a 400 with one sentence instead of FastAPI's 422 error list.
- gRPC: MLServer turns `raw_input_contents` into lists of Python floats (about
  10 ms for a batch of 256 images); here FP32 contents become NumPy views of
  the bytes, and contents that do not fit their shape are a 400, not an
  internal error. MLServer's own limit (grpc_max_message_length) bounds the message.
- Bad requests are not logged with a traceback.
These use MLServer internals (hence the exact pin in setup.cfg); each one
fails loudly at start-up if MLServer changes.
"""
import logging
import struct
import zlib

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from mlserver import raw
from mlserver.errors import MLServerError
from mlserver.grpc import converters
from mlserver.types import TensorData

from inference.serve.request import BadRequest


def harden_rest(app: FastAPI, max_body: int) -> None:
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_exception_handler(RequestValidationError, invalid_request)


def use_numpy_over_grpc() -> None:
    if converters.inject_raw is not raw.inject_raw:
        raise RuntimeError("mlserver.grpc.converters.inject_raw is not MLServer 1.7.1's: "
                           "check inference.serve.transport.")
    converters.inject_raw = numpy_raw_inputs


def quiet_bad_requests() -> None:
    logging.getLogger("mlserver.grpc").addFilter(lambda record: not (
        record.exc_info and isinstance(record.exc_info[1], MLServerError) and record.exc_info[1].status_code < 500))


def numpy_raw_inputs(inputs: list, contents: list[bytes]) -> list:
    """MLServer's inject_raw, with FP32 tensors as NumPy views instead of lists of Python floats."""
    empty = [tensor for tensor in inputs if not tensor.data]
    if len(empty) != len(contents):
        raise BadRequest(f"The request has {len(contents)} raw input contents for {len(empty)} inputs without data.")
    for tensor, data in zip(empty, contents):
        try:
            values = np.frombuffer(data, "<f4") if tensor.datatype == "FP32" else raw.unpack(tensor, data)
        except (ValueError, KeyError, struct.error):
            raise BadRequest(f"The raw contents of {tensor.name} ({len(data):,} bytes) do not fit its datatype "
                             f"{tensor.datatype} and shape {tensor.shape}.") from None
        tensor.data = TensorData.model_construct(root=values)  # validation would walk the array as a list
    return inputs


async def invalid_request(request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        message = "The request body is not valid JSON."
    else:
        where = ".".join(str(part) for part in first["loc"][1:])
        message = f"The request is not a valid inference request: {where}: {first['msg']}."
    return JSONResponse({"error": message}, status_code=400)


class BodyLimit:
    """ASGI middleware: reads the body, keeping at most `limit` bytes, and answers 400 when it is larger."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:  # a larger body is read to its end but not kept, so the client hears the answer
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.limit:
                chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = dict(scope["headers"])
        if size <= self.limit and b"gzip" in headers.get(b"content-encoding", b""):
            body, size = gunzip(body, self.limit)
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-encoding"]}
        if size > self.limit:
            megabytes = self.limit / (1 << 20)
            return await JSONResponse({"error": f"The request body is larger than the {megabytes:g} MB accepted "
                                                "(--max-body-mb)."}, status_code=400)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay, send)


def gunzip(body: bytes, limit: int) -> tuple[bytes, int]:
    """The decompressed body, cut one byte past the limit; the size it reached."""
    try:
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, limit + 1)
    except zlib.error:
        data = body  # left for MLServer to refuse
    return data, len(data)
