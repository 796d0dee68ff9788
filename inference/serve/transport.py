"""What MLServer 1.7.1's transports need for this server: a REST body limit, plain 400s, a NumPy path over gRPC,
the binary tensor extension over REST, an access log, a closed repository API, readiness of every model.

- REST: a request body over the limit gets a 413 before it is parsed (a gzip
  body is measured after decompression); a body that is not an inference
  request gets a 400 with one sentence instead of FastAPI's 422 error list;
  the binary tensor extension (inference.serve.binary) in both directions.
- gRPC: MLServer turns `raw_input_contents` into lists of Python floats (about
  10 ms for a batch of 256 images); here FP32 contents become NumPy views of
  the bytes, and contents that do not fit their shape are a 400, not an
  internal error. MLServer's own limit (grpc_max_message_length) bounds the message.
- Bad requests are not logged with a traceback; every request (but the
  health probes) gets one access-log line on stderr, REST and gRPC.
- The repository API (load, unload, index) is refused unless --repository-api
  opens it; ready means every served model is loaded and has answered.
MLServer 1.7.1 has no public hook for REST middleware, gRPC interceptors, its
data plane's readiness or its repository handlers, so these reach into its
objects (hence the exact pin in inference/pyproject.toml); tests/test_server.py
checks each behaviour on a real process, so a change in MLServer that undoes one
fails there.
"""
import logging
import struct
import sys
import time
import zlib
from types import SimpleNamespace

import grpc
import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware import Middleware
from fastapi.responses import JSONResponse
from grpc import aio as grpc_aio
from mlserver import raw
from mlserver.errors import MLServerError, ModelNotFound
from mlserver.grpc import converters
from mlserver.grpc import server as grpc_server_module
from mlserver.grpc import utils as grpc_utils
from mlserver.types import TensorData

from mnist_cnn_progression.inference.serve.binary import BinaryTensors, replaying
from mnist_cnn_progression.inference.serve.request import BadRequest

access = logging.getLogger("mnist-serve.access")
HEALTH = ("/v2/health/live", "/v2/health/ready")
GRPC_HEALTH = ("/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady")


class RepositoryClosed(MLServerError):
    def __init__(self):
        super().__init__("The repository API (load, unload, index) is closed on this server; start it with "
                         "--repository-api to open it.", status_code=403)


def harden_rest(app: FastAPI, max_body: int) -> None:
    """The access log outermost, so it sees every answer; the body limit, then the binary decoding, innermost:
    inside MLServer's metrics (their refusals are counted) and its gzip (a binary answer is compressed too)."""
    app.user_middleware += [Middleware(BodyLimit, limit=max_body), Middleware(BinaryTensors)]
    app.add_middleware(AccessLog)
    app.add_exception_handler(RequestValidationError, invalid_request)


def log_on_stderr() -> None:
    """This server's own lines (the access log, each model's warm-up, versions taken or refused) on stderr, at INFO;
    MLServer's go to stdout."""
    for logger, form in ((logging.getLogger("mnist-serve"), "%(asctime)s %(message)s"),
                         (access, "%(asctime)s access %(message)s")):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(form))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def close_repository(handlers) -> None:
    """REST /v2/repository/* and gRPC Repository* all call these three handlers: each refuses with a 403
    (gRPC: PERMISSION_DENIED for load and unload; MLServer answers UNKNOWN for any error of its index call)."""
    async def refuse(*_, **__):
        raise RepositoryClosed()
    handlers.index = handlers.load = handlers.unload = refuse
    grpc_utils.STATUS_CODE_MAPPING[403] = grpc.StatusCode.PERMISSION_DENIED


def ready_when_every_model_answers(data_plane, registry, models: list) -> None:
    """MLServer's ready asks only the models still registered: an unloaded one would not count against it.

    models: the ModelSettings served, read at each probe (the list the repository loads from).
    """
    async def every_model_ready() -> bool:
        for name in [model.name for model in models]:
            try:
                if not (await registry.get_model(name)).ready:
                    return False
            except ModelNotFound:
                return False
        return True
    data_plane.ready = every_model_ready


def log_grpc_access(grpc_server) -> None:
    """MLServer builds its grpc.aio server at start with its own interceptors only: this one is added to them."""
    create = grpc_server._create_server

    def create_with_access_log():
        real = grpc_server_module.aio
        grpc_server_module.aio = SimpleNamespace(server=lambda *args, interceptors=(), **kwargs: real.server(
            *args, interceptors=[AccessInterceptor(), *interceptors], **kwargs))
        try:
            return create()
        finally:
            grpc_server_module.aio = real
    grpc_server._create_server = create_with_access_log


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


class AccessLog:
    """ASGI middleware: one line per REST request: method, path, status, milliseconds (not the health probes)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in HEALTH:
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), 500  # an exception that escapes is answered as a 500 further out

        async def noted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, noted)
        finally:
            access.info("REST %s %s %d %.1f ms", scope["method"], scope["path"], status,
                        (time.perf_counter() - began) * 1e3)


class AccessInterceptor(grpc_aio.ServerInterceptor):
    """One line per unary gRPC call: the method, its status code, milliseconds (not the health probes)."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or details.method in GRPC_HEALTH:
            return handler
        behaviour = handler.unary_unary

        async def logged(request, context):
            began, failed = time.perf_counter(), False
            try:
                return await behaviour(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
                access.info("gRPC %s %s %.1f ms", details.method, getattr(code, "name", code),
                            (time.perf_counter() - began) * 1e3)
        return grpc.unary_unary_rpc_method_handler(logged, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class BodyLimit:
    """ASGI middleware: reads the body, keeping at most `limit` bytes, and answers 413 when it is larger."""

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
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-encoding"]  # in place: see binary
        if size > self.limit:
            megabytes = self.limit / (1 << 20)
            return await JSONResponse({"error": f"The request body is larger than the {megabytes:g} MB accepted "
                                                "(--max-body-mb)."}, status_code=413)(scope, receive, send)
        await self.app(scope, replaying(body, receive), send)


def gunzip(body: bytes, limit: int) -> tuple[bytes, int]:
    """The decompressed body, cut one byte past the limit; the size it reached."""
    try:
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, limit + 1)
    except zlib.error:
        data = body  # left for MLServer to refuse
    return data, len(data)
