"""Serving benchmark: the model server over gRPC and REST against in-process inference, measured in one run.

    python -m benchmarks.serving --models runs/fast       # a run directory or a bundle

Also: how long the server takes from its start to ready (every file hashed,
every model loaded and warmed up); REST both as JSON and with the binary
tensor extension (tritonclient's default); and this server's own batching
(inference.serve.batching: no timer, each request checked before it joins)
against MLServer's adaptive batching (max_batch_size / max_batch_time) on the
same ensemble, as "grpc_mlserver_batching", a second server in the same run.

The server (`python -m mnist_cnn_progression.inference.server`) runs as its own process on free
ports of 127.0.0.1 and is called with tritonclient (MLServer and
tritonclient.grpc cannot share a process). Rows: one image per request
(FP32 [1, 28, 28, 1]) at concurrency 1 and 8, latency p50/p99 over --calls
requests; and throughput in images/s at batch 256, median of --repeats
passes over 2,560 images. In-process inference (inference.ensemble, same
threads) is measured the same way, in turns with the server so that a burst
of load hits both alike, and every row carries its ratio to it. A second
process (--phases) times the server's own steps without any network: where
the time goes. Timings on a shared machine are noisy: the load average is
recorded, compare medians.
"""
import argparse
import asyncio
import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.flops import timed
from mnist_cnn_progression.inference.contract import as_images
from mnist_cnn_progression.inference.ensemble import Ensemble, bundle_dir

BATCH, PASS_IMAGES, CONCURRENCY = 256, 2560, (1, 8)
CLIENTS = {"grpc": "tritonclient.grpc", "rest": "tritonclient.http"}
TARGETS = {"grpc_throughput_ratio_min": 0.85, "grpc_p50_ms_at_concurrency_1_max": 5.0, "ready_seconds_max": 10.0}
ADAPTIVE = {"max_batch_size": 64, "max_batch_time": 0.002}  # MLServer's adaptive batching, for the comparison
# The server with MLServer's adaptive batching in place of inference.serve.batching: each (merged) request goes
# straight to ONNX Runtime in a thread.
MLSERVER_BATCHING = f"""
import asyncio, sys
from concurrent.futures import ThreadPoolExecutor
from mnist_cnn_progression.inference import server
from mnist_cnn_progression.inference.serve import runtime, versions
settings = versions.model_settings  # the name each version's settings are made through
def adaptive(*args, **kwargs):
    model = settings(*args, **kwargs)
    model.max_batch_size, model.max_batch_time = {ADAPTIVE["max_batch_size"]}, {ADAPTIVE["max_batch_time"]}
    return model
class Direct:
    def __init__(self, ensemble, mode):
        self.ensemble, self.mode, self.thread = ensemble, mode, ThreadPoolExecutor(1)
    async def predict(self, images):
        return await asyncio.get_running_loop().run_in_executor(
            self.thread, lambda: self.ensemble.predict(images, mode=self.mode))
versions.model_settings, runtime.Batcher = adaptive, Direct
sys.exit(server.main(sys.argv[1:]))
"""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("runs/fast"), help="a run directory or a bundle")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400, help="one-image requests per row")
    parser.add_argument("--phases", action="store_true", help="only time the server's steps in this process, as JSON")
    args = parser.parse_args(argv)
    if args.phases:
        print(json.dumps(phases(args.models, args.threads, args.calls // 4)))
        return {}
    load_before = os.getloadavg()
    images = digits(args.models)
    ensemble = Ensemble.load(args.models, threads=args.threads)
    ours, adaptive = Server(args.models, args.threads), Server(args.models, args.threads, MLSERVER_BATCHING)
    with ours as ports, adaptive as adaptive_ports:
        contenders = {"in_process": lambda x: ensemble.predict(x),
                      "grpc": remote("grpc", ports["grpc"]), "rest": remote("rest", ports["http"]),
                      "rest_binary": remote("rest", ports["http"], binary=True),
                      "grpc_mlserver_batching": remote("grpc", adaptive_ports["grpc"])}
        rates, seconds = measure(contenders, images, args.repeats, args.calls)
        neighbours = {name: failed_neighbours(contenders[name], images[:1])
                      for name in ("grpc", "grpc_mlserver_batching")}
        floor = {protocol: round(float(np.median([timed(ping) for _ in range(args.calls)])) * 1e3, 3)
                 for protocol, ping in (("grpc", readiness("grpc", ports["grpc"])),
                                        ("rest", readiness("rest", ports["http"])))}
    steps = json.loads(subprocess.run([sys.executable, "-m", "benchmarks.serving", "--phases", "--models",
                                       str(args.models), "--threads", str(args.threads), "--calls", str(args.calls)],
                                      capture_output=True, text=True, check=True).stdout)
    result = {"source": str(args.models), "threads": args.threads, "cpus": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "machine_idle_before": load_before[0] < 1.0,
              "note": "load_average_before is everyone else's work; the benchmark itself adds 1-2 to the after figure",
              "rows": rows(rates, seconds), "server_phases_ms": steps, "round_trip_without_inference_ms": floor,
              "ready_seconds": round(ours.ready_seconds, 2), "mlserver_adaptive_batching": ADAPTIVE,
              "good_requests_failed_beside_a_bad_one": neighbours,
              "targets": TARGETS}
    result["targets_met"] = targets_met(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def digits(models: Path) -> np.ndarray:
    """A run's test images, or 2,560 random ones in [0, 1] for a bare bundle."""
    test = Path(models) / "data" / "test_images.npy"
    if test.exists():
        return as_images(np.load(test)[:PASS_IMAGES])
    return np.random.default_rng(0).random((PASS_IMAGES, 28, 28, 1), dtype=np.float32)


class Server:
    """The server (or `program`, run with python -c, taking its arguments) as a subprocess on free ports.

    Stopped with SIGTERM; ready_seconds is from its start to its first 200 on /v2/health/ready.
    """

    def __init__(self, models: Path, threads: int, program: str | None = None):
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        start = ["-c", program] if program else ["-m", "mnist_cnn_progression.inference.server"]
        self.command = [sys.executable, *start, "--models", str(models), "--threads", str(threads),
                        *(f"--{name}-port={port}" for name, port in self.ports.items())]

    def __enter__(self) -> dict:
        import urllib.request
        began = time.monotonic()
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while time.monotonic() - began < 120:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/v2/health/ready", timeout=1)
                self.ready_seconds = time.monotonic() - began
                return self.ports
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit(f"the server stopped with status {self.process.returncode}")
                time.sleep(0.05)
        raise SystemExit("the server was not ready within 120 s")

    def __exit__(self, *_):
        self.process.terminate()
        self.process.wait(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def remote(protocol: str, port: int, binary: bool = False):
    """predict(images) over tritonclient; one client per calling thread, made on first use.

    REST sends JSON unless binary (the binary tensor extension); its answers come as binary tensors either way,
    as tritonclient asks by default.
    """
    module = importlib.import_module(CLIENTS[protocol])
    options = {"binary_data": binary} if protocol == "rest" else {}
    local = threading.local()

    def predict(images: np.ndarray):
        if not hasattr(local, "client"):
            local.client = module.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = module.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, **options)
        return local.client.infer("ensemble", [tensor]).as_numpy("class")
    return predict


def readiness(protocol: str, port: int):
    """A call that does no inference (is the server ready?): the client, the network and the framework alone."""
    return importlib.import_module(CLIENTS[protocol]).InferenceServerClient(f"127.0.0.1:{port}").is_server_ready


def measure(contenders: dict, images: np.ndarray, repeats: int, calls: int):
    """Images/s of passes at batch 256, and seconds per one-image request at each concurrency, taken in turns."""
    rates = {name: [] for name in contenders}
    seconds = {(name, c): [] for name in contenders for c in CONCURRENCY}
    for predict in contenders.values():  # warm-up: sessions, connections, memory pools
        predict(images[:BATCH])
        predict(images[:1])
    for round_ in range(repeats):
        for name, predict in contenders.items():
            rates[name].append(len(images) / timed(lambda: [predict(images[i:i + BATCH])
                                                            for i in range(0, len(images), BATCH)]))
            for concurrency in CONCURRENCY:
                first = round_ * calls // repeats
                seconds[name, concurrency] += concurrently(predict, images[first:first + calls // repeats],
                                                           concurrency)
    return rates, seconds


def failed_neighbours(predict, image: np.ndarray, rounds: int = 30) -> str:
    """Eight clients at once, one of them sending pixels out of [0, 1]: how many of the seven good requests failed."""
    failed = []

    def call(images, good: bool):
        try:
            predict(images)
        except Exception:  # noqa: BLE001 - the bad request's refusal, or a good one's failure: counted
            failed.append(good)
    for _ in range(rounds):
        callers = [threading.Thread(target=call, args=(image + 5 if k == 0 else image, k != 0)) for k in range(8)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join()
    return f"{sum(failed)} of {rounds * 7}"


def concurrently(predict, images: np.ndarray, concurrency: int) -> list[float]:
    """Seconds per one-image call, with `concurrency` callers at once sharing the images."""
    times = []

    def caller(part):
        times.extend(timed(lambda: predict(part[i:i + 1])) for i in range(len(part)))
    callers = [threading.Thread(target=caller, args=(part,)) for part in np.array_split(images, concurrency)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    return times


def rows(rates: dict, seconds: dict) -> list[dict]:
    base_rate = float(np.median(rates["in_process"]))
    result = []
    for name in rates:
        rate = float(np.median(rates[name]))
        row = {"name": name, "throughput_batch_256": round(rate), "throughput_ratio": round(rate / base_rate, 3)}
        for concurrency in CONCURRENCY:
            p50, p99 = (float(np.percentile(seconds[name, concurrency], q)) * 1e3 for q in (50, 99))
            base = float(np.percentile(seconds["in_process", concurrency], 50)) * 1e3
            row[f"concurrency_{concurrency}"] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                                                "p50_ratio": round(p50 / base, 2)}
        result.append(row)
    return result


def targets_met(result: dict) -> dict:
    grpc = next(row for row in result["rows"] if row["name"] == "grpc")
    return {"grpc_throughput_ratio": grpc["throughput_ratio"] >= TARGETS["grpc_throughput_ratio_min"],
            "grpc_p50_at_concurrency_1": grpc["concurrency_1"]["p50_ms"] <= TARGETS["grpc_p50_ms_at_concurrency_1_max"],
            "ready_seconds": result["ready_seconds"] <= TARGETS["ready_seconds_max"]}


def phases(models: Path, threads: int, calls: int) -> dict:
    """Median milliseconds of each server step for one request of 1 and of 256 images, gRPC and REST, no network.

    decode: the message to MLServer's request (gRPC: protobuf and this
    server's NumPy path; REST: JSON and pydantic, as FastAPI does); validate:
    inference.serve.request (over REST also the list of numbers to NumPy); onnxruntime: the ensemble's predict; respond:
    the response tensors and their encoding back to protobuf or JSON.
    """
    import orjson
    from mlserver.codecs.json import encode_to_json_bytes
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
    from mlserver.types import InferenceRequest

    from mnist_cnn_progression.inference.serve import mlserver_hooks, transport
    from mnist_cnn_progression.inference.serve.catalogue import catalogue
    from mnist_cnn_progression.inference.serve.request import read_request
    from mnist_cnn_progression.inference.serve.runtime import DigitModel, model_settings
    mlserver_hooks.replace_grpc_raw_inputs(transport.numpy_raw_inputs)
    served = catalogue(bundle_dir(models), threads=threads)[0]
    model = DigitModel(model_settings(served, mode="vote", max_batch=BATCH))
    asyncio.run(model.load())
    images = digits(models)
    decoders = {"grpc": lambda message: ModelInferRequestConverter.to_types(pb.ModelInferRequest.FromString(message)),
                "rest": lambda body: InferenceRequest.model_validate(orjson.loads(body))}
    encoders = {"grpc": lambda response: ModelInferResponseConverter.from_types(response, use_raw=True)
                .SerializeToString(),
                "rest": lambda response: encode_to_json_bytes(response.model_dump(exclude_none=True))}
    result = {}
    for batch in (1, BATCH):
        x = images[:batch]
        tensor = {"name": "images", "datatype": "FP32", "shape": list(x.shape)}
        messages = {"grpc": pb.ModelInferRequest(model_name="ensemble", inputs=[pb.ModelInferRequest.InferInputTensor(
                        **tensor)], raw_input_contents=[x.tobytes()]).SerializeToString(),
                    "rest": json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()}
        for protocol, message in messages.items():
            prediction = served.ensemble.predict(x)
            steps = {"decode": lambda: decoders[protocol](message),
                     "validate": lambda: read_request(decoders[protocol](message), BATCH),
                     "onnxruntime": lambda: served.ensemble.predict(x),
                     "respond": lambda: encoders[protocol](model.respond(prediction, None, []))}
            times = {step: [timed(call) for _ in range(calls if batch == 1 else max(3, calls // 20))]
                     for step, call in steps.items()}
            medians = {step: float(np.median(t)) * 1e3 for step, t in times.items()}
            medians["validate"] -= medians["decode"]  # validate ran on a freshly decoded request each time
            result[f"{protocol}_batch_{batch}"] = {step: round(ms, 3) for step, ms in medians.items()}
    return result


def markdown(result: dict) -> str:
    lines = [f"Source: {result['source']}; {result['threads']} ONNX Runtime threads on {result['cpus']} CPUs; "
             f"load average {result['load_average_before'][0]:.2f} before, "
             f"{result['load_average_after'][0]:.2f} after.",
             "", "| path | img/s at batch 256 (x in-process) | 1 image, concurrency 1: p50 / p99 ms (x) "
             "| concurrency 8: p50 / p99 ms (x) |", "|---|---:|---:|---:|"]
    for row in result["rows"]:
        cells = [f"{row[f'concurrency_{c}']['p50_ms']:.2f} / {row[f'concurrency_{c}']['p99_ms']:.2f} "
                 f"({row[f'concurrency_{c}']['p50_ratio']:.2f})" for c in CONCURRENCY]
        lines.append(f"| {row['name']} | {row['throughput_batch_256']:,} ({row['throughput_ratio']:.2f}) | "
                     + " | ".join(cells) + " |")
    floor = result["round_trip_without_inference_ms"]
    lines += ["", f"A round trip with no inference (is the server ready?), p50: gRPC {floor['grpc']:.2f} ms, "
                  f"REST {floor['rest']:.2f} ms. Ready {result['ready_seconds']:.1f} s after its start.", "",
              "Good requests failed beside a bad one (8 concurrent clients, one sending pixels out of [0, 1]): "
              + ", ".join(f"{name} {count}" for name, count in result["good_requests_failed_beside_a_bad_one"].items())
              + ".", "", "Server steps, median ms (no network):", "",
              "| request | decode | validate | onnxruntime | respond |", "|---|---:|---:|---:|---:|"]
    for name, steps in result["server_phases_ms"].items():
        lines.append(f"| {name} | " + " | ".join(f"{steps[s]:.3f}" for s in ("decode", "validate", "onnxruntime",
                                                                          "respond")) + " |")
    lines += ["", f"Targets met: {result['targets_met']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
