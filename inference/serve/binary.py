"""The binary tensor extension of the v2 REST protocol (KServe's and Triton's), for MLServer, which has none.

A request may carry its tensors as raw bytes after its JSON: the
`Inference-Header-Content-Length` header gives the JSON's length, and each
input sent that way has `parameters.binary_data_size` instead of `data`, in
order. Little-endian values; BYTES as items each prefixed by its 4-byte length.
Here the bytes become the JSON `data` MLServer reads (BYTES items as base64
text, as REST pictures are sent). Outputs come back as raw bytes when the request asks
(`parameters.binary_data_output`, or `binary_data` on an output): as
tritonclient HTTP does by default.
"""
import base64
import struct

import numpy as np
import orjson
from fastapi.responses import JSONResponse

HEADER = b"inference-header-content-length"
DTYPES = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
EXPECTED = ("send JSON, or the binary tensor extension: the JSON header, then each input's raw little-endian bytes "
            "in order, with Inference-Header-Content-Length and each input's parameters.binary_data_size")


class BinaryRequestError(ValueError):
    pass


class BinaryTensors:
    """ASGI middleware: binary inputs become JSON for MLServer; its JSON answer becomes binary where asked."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/infer"):
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        headers = dict(scope["headers"])
        try:
            request = orjson.loads(body[:int(headers[HEADER])]) if HEADER in headers else None
            if request is not None:
                body = orjson.dumps(json_request(request, body[int(headers[HEADER]):]))
        except (ValueError, orjson.JSONDecodeError, BinaryRequestError) as error:
            message = str(error) if isinstance(error, BinaryRequestError) else f"The body is not valid: {EXPECTED}."
            return await JSONResponse({"error": message}, status_code=400)(scope, receive, send)
        if request is not None:  # the body is JSON now, whatever type the binary one was sent as
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (HEADER, b"content-type")] + [
                (b"content-type", b"application/json")]
        elif b"binary_data" in body:  # a JSON body is parsed here only when it may ask for binary outputs
            request = loads(body)
        binary = binary_outputs(request)
        # The scope is changed in place: MLServer's metrics, further out, read the route the router sets in it.
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-length"] + [
            (b"content-length", str(len(body)).encode())]
        await self.app(scope, replaying(body, receive), send if binary is None else BinaryAnswer(send, binary).send)


async def read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def replaying(body: bytes, receive):
    """An ASGI receive that hands on the body, already read, as one message, then waits on the real one."""
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}
    return replay


def loads(body: bytes) -> dict | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # MLServer refuses it with its own sentence
    return value if isinstance(value, dict) else None


def json_request(request: dict, raw: bytes) -> dict:
    """The request with each binary input's bytes as its JSON data."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs", []), list):
        raise BinaryRequestError(f"The JSON header is not an inference request: {EXPECTED}.")
    start = 0
    for tensor in request.get("inputs") or []:
        parameters = tensor.get("parameters") or {}
        if "binary_data_size" not in parameters:
            continue
        size = parameters.pop("binary_data_size")
        if not isinstance(size, int) or start + size > len(raw):
            raise BinaryRequestError(f"Input {tensor.get('name')!r} declares {size} binary bytes, but the body "
                                     f"holds {len(raw) - start:,} after its JSON header: {EXPECTED}.")
        tensor["data"] = values(tensor, raw[start:start + size])
        start += size
    if start != len(raw):
        raise BinaryRequestError(f"The body holds {len(raw) - start:,} bytes more than its inputs' binary_data_size "
                                 f"declare: {EXPECTED}.")
    return request


def values(tensor: dict, data: bytes) -> list:
    datatype = tensor.get("datatype")
    if datatype == "BYTES":
        return [base64.b64encode(item).decode() for item in unpack_bytes(data, tensor.get("name"))]
    if datatype not in DTYPES or len(data) % np.dtype(DTYPES[datatype]).itemsize:
        raise BinaryRequestError(f"The {len(data):,} binary bytes of {tensor.get('name')!r} do not fit its datatype "
                                 f"{datatype}.")
    return np.frombuffer(data, DTYPES[datatype]).tolist()


def unpack_bytes(data: bytes, name) -> list[bytes]:
    items, start = [], 0
    while start < len(data):
        if start + 4 > len(data):
            raise BinaryRequestError(f"The BYTES of {name!r} end inside an item's 4-byte length.")
        (length,) = struct.unpack_from("<I", data, start)
        items.append(data[start + 4:start + 4 + length])
        if start + 4 + length > len(data):
            raise BinaryRequestError(f"The BYTES of {name!r} end inside an item of {length:,} bytes.")
        start += 4 + length
    return items


def binary_outputs(request: dict | None) -> set[str] | bool | None:
    """True: every output as bytes; a set: those outputs; None: a plain JSON answer."""
    if not request:
        return None
    if (request.get("parameters") or {}).get("binary_data_output"):
        return True
    named = {output.get("name") for output in request.get("outputs") or []
             if (output.get("parameters") or {}).get("binary_data")}
    return named or None


class BinaryAnswer:
    """Holds back MLServer's JSON answer and sends it as a JSON header and the chosen outputs' raw bytes."""

    def __init__(self, send, wanted: set[str] | bool):
        self.forward, self.wanted, self.start, self.chunks = send, wanted, None, []

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.start = message
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body, headers = b"".join(self.chunks), [(k, v) for k, v in self.start.get("headers", [])
                                                 if k != b"content-length"]
        answer = loads(body) if self.start["status"] == 200 else None
        if answer is not None:
            header, raw = binary_response(answer, self.wanted)
            body = header + raw
            headers = [(k, v) for k, v in headers if k != b"content-type"] + [
                (b"content-type", b"application/octet-stream"), (HEADER, str(len(header)).encode())]
        await self.forward({**self.start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await self.forward({"type": "http.response.body", "body": body})


def binary_response(answer: dict, wanted: set[str] | bool) -> tuple[bytes, bytes]:
    raw = []
    for output in answer.get("outputs") or []:
        if wanted is True or output.get("name") in wanted:
            data = to_bytes(output)
            output.pop("data", None)
            output["parameters"] = {**(output.get("parameters") or {}), "binary_data_size": len(data)}
            raw.append(data)
    return orjson.dumps(answer), b"".join(raw)


def to_bytes(output: dict) -> bytes:
    if output["datatype"] == "BYTES":
        items = [item.encode() if isinstance(item, str) else bytes(item) for item in output.get("data", [])]
        return b"".join(struct.pack("<I", len(item)) + item for item in items)
    return np.asarray(output.get("data", []), DTYPES[output["datatype"]]).tobytes()
