"""What MLServer 1.7.1's transports need for this server: a REST body limit, plain 400s, a NumPy path over gRPC,
the binary tensor extension over REST, an access log naming each model version, a closed repository API, readiness
of every model.

- REST: a request body over the limit gets a 413 before it is parsed (a gzip
  body is measured after decompression); a body that is not an inference
  request gets a 400 with one sentence instead of FastAPI's 422 error list;
  the binary tensor extension (inference.serve.binary) in both directions.
- gRPC: MLServer turns `raw_input_contents` into lists of Python floats (about
  10 ms for a batch of 256 images); here FP32 contents become NumPy views of
  the bytes, and contents that do not fit their shape are a 400, not an
  internal error. MLServer's own limit (grpc_max_message_length) bounds the message.
- Bad requests are not logged with a traceback; every request (but the
  health probes) gets one access-log line on stderr, REST and gRPC, with the
  model and version that handled it.
- The repository API (load, unload, index) is refused, whatever the request,
  unless --repository-api opens it; ready means every served model is loaded
  and has answered, and not ready is a 503 with a sentence.
These are ASGI middlewares, gRPC interceptors and functions; where they plug
into MLServer without a public hook is inference.serve.mlserver_hooks.
"""
import logging
import struct
import sys
import time
import zlib
from contextvars import ContextVar

import grpc
import numpy as np
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from grpc import aio as grpc_aio
from mlserver import raw
from mlserver.errors import MLServerError, ModelNotFound
from mlserver.types import TensorData

from mnist_cnn_progression.inference.serve.binary import replaying
from mnist_cnn_progression.inference.serve.request import BadRequest

access = logging.getLogger("mnist-serve.access")
READY, LIVE = "/v2/health/ready", "/v2/health/live"
GRPC_HEALTH = ("/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady")
REPOSITORY_PATH = "/v2/repository/"  # index, models/NAME/load, models/NAME/unload
REPOSITORY_CALLS = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")  # in both gRPC services
CLOSED = ("The repository API (load, unload, index) is closed on this server; start it with --repository-api to "
          "open it.")
# The model and version a request reached, for its access-log line: a dict set per request, filled by the model.
answering: ContextVar[dict | None] = ContextVar("answering", default=None)


def note_answering(model: str, version: str | None) -> None:
    """Called by the model handling a request: its access-log line names them."""
    noted = answering.get()
    if noted is not None:
        noted.update(model=model, version=version)


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


async def not_ready(registry, models: list) -> list[str]:
    """The served models that are not loaded and ready. MLServer's own check asks only the models still
    registered, so an unloaded one would not count against it.

    registry: MLServer's MultiModelRegistry; models: the ModelSettings served, read at each probe.
    """
    missing = []
    for name in [model.name for model in models]:
        try:
            if not (await registry.get_model(name)).ready:
                missing.append(name)
        except ModelNotFound:
            missing.append(name)
    return missing


class ReadyProbe:
    """ASGI middleware: GET /v2/health/ready is 200 while every served model is ready, else a 503 that names those
    not ready (MLServer answers a 400 with an empty body)."""

    def __init__(self, app, not_ready):
        self.app, self.not_ready = app, not_ready

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != READY:
            return await self.app(scope, receive, send)
        missing = await self.not_ready()
        answer = Response(status_code=200) if not missing else JSONResponse(
            {"error": f"Not ready: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not loaded and "
                      "ready (unloaded through the repository API, or still loading)."}, status_code=503)
        await answer(scope, receive, send)


class ClosedRepository:
    """ASGI middleware: every /v2/repository/ request gets a 403 before it is read or routed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(REPOSITORY_PATH):
            return await self.app(scope, receive, send)
        await JSONResponse({"error": CLOSED}, status_code=403)(scope, receive, send)


class ClosedRepositoryInterceptor(grpc_aio.ServerInterceptor):
    """gRPC's Repository* calls (in MLServer's two services) answer PERMISSION_DENIED before they run."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.rsplit("/", 1)[-1] not in REPOSITORY_CALLS:
            return handler

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, CLOSED)
        return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


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


def answered_by(noted: dict) -> str:
    """' ensemble version 2' when a model handled the request, else nothing."""
    return f" {noted['model']} version {noted['version']}" if noted else ""


class AccessLog:
    """ASGI middleware: one line per REST request: method, path, status, milliseconds, the model and version that
    handled it (not the health probes)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in (READY, LIVE):
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), 500  # an exception that escapes is answered as a 500 further out
        model = {}
        token = answering.set(model)

        async def noted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, noted)
        finally:
            access.info("REST %s %s %d %.1f ms%s", scope["method"], scope["path"], status,
                        (time.perf_counter() - began) * 1e3, answered_by(model))
            answering.reset(token)


class AccessInterceptor(grpc_aio.ServerInterceptor):
    """One line per unary gRPC call: the method, its status code, milliseconds (not the health probes)."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or details.method in GRPC_HEALTH:
            return handler
        behaviour = handler.unary_unary

        async def logged(request, context):
            began, failed, model = time.perf_counter(), False, {}
            token = answering.set(model)
            try:
                return await behaviour(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
                access.info("gRPC %s %s %.1f ms%s", details.method, getattr(code, "name", code),
                            (time.perf_counter() - began) * 1e3, answered_by(model))
                answering.reset(token)
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
