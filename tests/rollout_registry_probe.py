"""Run by test_rollout in a process of its own (MLServer and tritonclient.grpc cannot share one).

    python tests/rollout_registry_probe.py BASE   (BASE/1 a bundle; BASE/2 copied from it)

Swaps version 1 for 2 in MLServer's own model registry, as the server does,
while stand-in requests look at the registry at every chance the event loop
gives them. Prints, as JSON, each state they saw, in the order first seen: the
version answering an unversioned request, whether it was ready, whether the
server's readiness check would have said ready; and whether a model retired
while computing a request answered it first. The swap depends on MLServer
1.7.1 registering a new version and making it ready with no chance for a
request in between, and on a retired version staying ready until a readiness
check that counted it has read it (inference.serve.runtime.RETIRING_SECONDS).
"""
import asyncio
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from mlserver.registry import MultiModelRegistry
from mlserver.types import InferenceRequest, RequestInput, RequestOutput

from mnist_cnn_progression.inference.serve.versions import Rollout

PHASES = 4  # stand-in requests, each a step of the event loop after the one before
BUSY_IMAGES = 2000  # a batch that keeps ONNX Runtime busy for a while


async def swap(base: Path) -> list:
    rollout = Rollout(base, threads=1, mode="vote", max_batch=BUSY_IMAGES)
    rollout.first()
    registry = MultiModelRegistry()
    served = rollout.start_settings()
    for settings in served:
        await registry.load(settings)
    shutil.copytree(base / "1", base / "2")
    seen, swapping = [], True

    async def request(phase: int):
        for _ in range(phase):
            await asyncio.sleep(0)
        while swapping:
            model = await registry.get_model("ensemble")  # as an unversioned request finds it
            state = [model.version, model.ready]
            models = await registry.get_models()  # as MLServer's readiness check does
            state.append(all([m.ready for m in models]))
            if state not in seen:
                seen.append(state)
            await asyncio.sleep(0)
    looking = [asyncio.create_task(request(phase)) for phase in range(PHASES)]
    await asyncio.sleep(0)
    await rollout.update(registry, served)
    await asyncio.sleep(0.1)
    swapping = False
    await asyncio.gather(*looking)
    return {"states": seen, "in_flight_answered_first": await retire_while_busy(registry)}


async def retire_while_busy(registry: MultiModelRegistry) -> bool:
    """Whether a model's unload waits for the request it is computing (its thread is shut down afterwards)."""
    model = await registry.get_model("ensemble")
    images = np.zeros((BUSY_IMAGES, 28, 28, 1), np.float32)
    tensor = RequestInput(name="images", datatype="FP32", shape=list(images.shape), data=images.ravel().tolist())
    request = InferenceRequest(inputs=[tensor], outputs=[RequestOutput(name="class")])
    answer = asyncio.create_task(model.predict(request))
    await asyncio.sleep(0)  # it joins the batcher, and ONNX Runtime starts on it
    await model.unload()
    return answer.done() and len(answer.result().outputs[0].data) == BUSY_IMAGES


if __name__ == "__main__":
    print(json.dumps(asyncio.run(swap(Path(sys.argv[1])))))
    assert "tensorflow" not in sys.modules
