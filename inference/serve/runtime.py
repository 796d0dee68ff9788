"""The MLServer runtime: one model of the catalogue behind the Open Inference Protocol (REST and gRPC).

MLServer builds one DigitModel per model from its ModelSettings; the loaded,
checked ensemble arrives in `parameters.extra` (inference.serve.catalogue did
the loading before any port opened).
"""
import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.responses import HTMLResponse
from mlserver import MLModel
from mlserver.handlers import custom_handler
from mlserver.repository import ModelRepository
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters, ResponseOutput
from prometheus_client import Counter, Histogram

from mnist_cnn_progression.inference.contract import (CLASS_OUTPUT, IMAGE_SHAPE, INPUT_NAME, MEAN_OUTPUT, NUM_CLASSES,
                                                      VOTES_OUTPUT)
from mnist_cnn_progression.inference.ensemble import Prediction
from mnist_cnn_progression.inference.serve.batching import Batcher
from mnist_cnn_progression.inference.serve.catalogue import Served
from mnist_cnn_progression.inference.serve.request import ERROR, PICTURES, BadRequest, read_request, unanswered
from mnist_cnn_progression.inference.serve.transport import note_answering

PAGE = Path(__file__).resolve().parent.parent / "page" / "index.html"
IMAGES = [-1, *IMAGE_SHAPE]
RETIRING_SECONDS = 0.5  # a retired version stays ready this long (DigitModel.unload)
# On prometheus_client's default registry, which MLServer's metrics port serves (one process). MLServer's own
# model_infer_* series take their version from the request's URL: "None" for a request that names none.
INFERENCE_REQUESTS = Counter("mnist_serve_inference_requests", "Inference requests a model version handled, by "
                             "outcome (answered, refused: a bad request, failed)", ["model", "version", "outcome"])
ANSWERED_IMAGES = Counter("mnist_serve_images", "Images or pictures a model version answered", ["model", "version"])
INFERENCE_SECONDS = Histogram("mnist_serve_inference_seconds", "Seconds from a request's arrival at a model version "
                              "to its answer (its body already parsed)", ["model", "version"],
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INPUTS = [
    MetadataTensor(name=INPUT_NAME, datatype="FP32", shape=IMAGES,
                   parameters=Parameters(note="white digit on black, pixel / 255 in [0, 1], MNIST-centred")),
    MetadataTensor(name=PICTURES, datatype="BYTES", shape=[-1],
                   parameters=Parameters(note="encoded PNG/JPEG files: raw bytes over gRPC, base64 text over REST")),
]
OUTPUTS = [
    MetadataTensor(name=CLASS_OUTPUT, datatype="INT64", shape=[-1]),
    MetadataTensor(name=VOTES_OUTPUT, datatype="INT64", shape=[-1, NUM_CLASSES]),
    MetadataTensor(name=MEAN_OUTPUT, datatype="FP32", shape=[-1, NUM_CLASSES]),
    MetadataTensor(name="confidence", datatype="FP32", shape=[-1]),
    MetadataTensor(name="warning", datatype="BYTES", shape=[-1], parameters=Parameters(note="empty when none")),
    MetadataTensor(name=INPUT_NAME, datatype="FP32", shape=IMAGES,
                   parameters=Parameters(note="pictures requests only: the image the networks saw")),
    MetadataTensor(name=ERROR, datatype="BYTES", shape=[-1],
                   parameters=Parameters(note="pictures requests only: why a picture was not read, empty when it "
                                              "was; such a row holds class -1, zero votes and probabilities")),
]


def model_settings(served: Served, *, mode: str, max_batch: int, version: str | None = None,
                   versions: Callable[[], list[str]] = list) -> ModelSettings:
    """version: this one's, in a base directory of versions; versions: those loaded now (inference.serve.versions)."""
    runtime = DigitModelWithPage if served.name == "ensemble" else DigitModel
    extra = {"served": served, "mode": mode, "max_batch": max_batch, "versions": versions}
    return ModelSettings(name=served.name, implementation=runtime, platform="onnxruntime",
                         inputs=INPUTS, outputs=OUTPUTS, parameters=ModelParameters(version=version, extra=extra))


class ServedRepository(ModelRepository):
    """The model repository MLServer loads from (at start, and on a repository API load): the models served now."""

    def __init__(self, root: str, models: list[ModelSettings]):
        self.models = models

    async def find(self, name: str) -> list[ModelSettings]:
        return [settings for settings in self.models if settings.name == name]

    async def list(self) -> list[ModelSettings]:  # after find: the name `list` is this method from here on
        return self.models


class DigitModel(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.served, self.mode, self.max_batch = extra["served"], extra["mode"], extra["max_batch"]
        # Never awaits: MLServer makes a new version the default before load() returns, so a load that waited
        # would leave requests a moment with a model not ready. The warm-up inference ran before (versions.prepare).
        self.batcher = Batcher(self.served.ensemble, self.mode)
        return True

    async def metadata(self):
        note_answering(self.name, self.version)
        metadata = await super().metadata()
        metadata.parameters = Parameters(mode=self.mode, max_batch=self.max_batch, **self.served.about)
        metadata.versions = self.settings.parameters.extra["versions"]()
        return metadata

    async def unload(self) -> bool:
        """Retired (a newer version answers now): the requests it holds are answered before its thread ends.

        It stays ready a moment longer: MLServer's readiness check lists the
        models, then awaits, then reads whether each is ready.
        """
        while self.batcher.task is not None:
            await asyncio.wait({self.batcher.task})
        await asyncio.sleep(RETIRING_SECONDS)
        self.batcher.thread.shutdown()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """The answer; counted by model, version and outcome, and timed when answered (the metrics port)."""
        note_answering(self.name, self.version)
        began, outcome = time.perf_counter(), "failed"
        try:
            answer = await self.answer(payload)
            outcome = "answered"
            ANSWERED_IMAGES.labels(self.name, self.version).inc(answer.outputs[0].shape[0] if answer.outputs else 0)
            INFERENCE_SECONDS.labels(self.name, self.version).observe(time.perf_counter() - began)
            return answer
        except BadRequest:
            outcome = "refused"
            raise
        finally:
            INFERENCE_REQUESTS.labels(self.name, self.version, outcome).inc()

    async def answer(self, payload: InferenceRequest) -> InferenceResponse:
        images, errors = read_request(payload, self.max_batch)
        from_pictures = errors is not None
        wanted = [output.name for output in payload.outputs or ()]
        known = {tensor.name for tensor in OUTPUTS} - (set() if from_pictures else {INPUT_NAME, ERROR})
        for name in wanted:
            if name not in known:
                raise BadRequest(f"Unknown output {name!r}: the outputs are {', '.join(sorted(known))}.")
        prediction = await self.batcher.predict(images)
        prediction = unanswered(prediction, errors)
        return self.respond(prediction, images if from_pictures else None, wanted, errors)

    def respond(self, prediction: Prediction, images: np.ndarray | None, wanted: list[str],
                errors: list[str] | None = None) -> InferenceResponse:
        """The outputs asked for (all when none is named); `images` and `error` only for pictures (what was seen)."""
        outputs = [tensor(CLASS_OUTPUT, "INT64", prediction.classes),
                   tensor(VOTES_OUTPUT, "INT64", prediction.votes),
                   tensor(MEAN_OUTPUT, "FP32", prediction.probabilities),
                   tensor("confidence", "FP32", prediction.confidence),
                   tensor("warning", "BYTES", np.array(prediction.warnings, dtype=str).reshape(-1))]
        if images is not None:
            outputs.append(tensor(INPUT_NAME, "FP32", images))
        if errors is not None:
            outputs.append(tensor(ERROR, "BYTES", np.array(errors, dtype=str).reshape(-1)))
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[o for o in outputs if not wanted or o.name in wanted])


def tensor(name: str, datatype: str, array: np.ndarray) -> ResponseOutput:
    return ResponseOutput(name=name, datatype=datatype, shape=list(array.shape), data=array.ravel().tolist())


class DigitModelWithPage(DigitModel):
    """`ensemble` also serves the draw-a-digit page at / (MLServer adds a custom handler's route once per model)."""

    @custom_handler(rest_path="/", rest_method="GET")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())
