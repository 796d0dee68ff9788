"""Model versions as a client sees them: a base directory of numbered versions, a new one taking over under load.

The server is `python -m mnist_cnn_progression.inference.server --models BASE` in its own process on
free ports of 127.0.0.1 (test_server's helpers), called with tritonclient.
Version 1 is the five-network bundle of conftest; version 2 is built from
three of its networks, so every answer tells which version gave it: its votes
add up to 5 or to 3. The tests of the module server run in order: 1 answers,
2 takes over, a damaged 3 is refused, removing 2 brings 1 back.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import TRAIN, module_command
from mnist_cnn_progression.inference.releases import RELEASE, WITHDRAWN
from test_server import (PROTOCOLS, by_version, client, free_port, grpcclient, httpclient, metadata,  # noqa: F401
                         run_dir, scrape, start, stop)

from tritonclient.utils import InferenceServerException  # noqa: E402 - test_server skips without tritonclient

pytestmark = pytest.mark.slow  # every test here swaps versions in a server process

POLL_SECONDS = 0.5
OLD, NEW = 5, 3  # the networks of versions 1 and 2: the votes of one image add up to these


@pytest.fixture(scope="module")
def three_networks(tmp_path_factory, bundle, mnist_digits):
    """Another bundle, as another run would make it: three of the five networks."""
    from mnist_cnn_progression.export.bundle import build_bundle
    images, labels = mnist_digits
    out = tmp_path_factory.mktemp("three") / "bundle"
    build_bundle([bundle / "members" / f"member_{k}.onnx" for k in range(NEW)], out,
                 calibration_images=images[:TRAIN], test_images=images[TRAIN:], test_labels=labels[TRAIN:],
                 metadata={"stage": "ensemble"})
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, run_dir):
    """Version 1 is a run directory: the bundle and its stage `small`, which version 2 does not have."""
    base = tmp_path_factory.mktemp("versions")
    shutil.copytree(run_dir, base / "1")
    return base


@pytest.fixture(scope="module")
def server(base):
    process, ports = start([*module_command("inference.server"), "--models", str(base),
                               "--poll-seconds", str(POLL_SECONDS)])
    yield {"ports": ports, "process": process}
    stop(process)


def release_record(version: int, parent: int | None, accuracy: float) -> dict:
    """A release.json as mnist-push writes it (inference.releases.RELEASE), by hand."""
    return {"version": version, "pushed_at": "2026-12-06T05:40:00+00:00", "pushed_by": "root", "parent": parent,
            "accuracy": {"float32": accuracy, "int8": accuracy - 0.0002}, "errors": {"float32": 30, "int8": 32},
            "test_images": 10000, "recall": [0.999, 0.998] + [0.997] * 8, "test_digest": "ab" * 32,
            "training_data": "MNIST IDX files from a local directory; split: reference; 50,000 train",
            "sample": False, "preset": "fast", "seed": 0, "fingerprints": {"ensemble": "cd" * 32},
            "commit": "not from a git checkout",
            "gate": {"verdict": "blessed", "min_accuracy": 0.9967, "tolerance": 0.0005, "parent_accuracy": None,
                     "reason": "It scores 99.70% on the 10,000 test digits, above the floor."}}


def copy_in(bundle, base, version: int, damaged: bool = False, release: dict | None = None) -> None:
    """As an operator should: copy under a hidden name, then rename the whole version into place."""
    staging = base / f".{version}"
    shutil.copytree(bundle, staging)
    if release is not None:
        (staging / RELEASE).write_text(json.dumps(release))
    if damaged:
        with open(staging / "ensemble.onnx", "r+b") as file:
            file.seek(100)
            file.write(b"\0damaged\0")
    staging.rename(base / str(version))


def answer(triton, protocol: str, version: str = "") -> tuple[int, str]:
    """How many networks voted on one digit (which version answered), and the version the answer names."""
    tensor = (httpclient if protocol == "http" else grpcclient).InferInput("images", [1, 28, 28, 1], "FP32")
    image = np.zeros((1, 28, 28, 1), np.float32)
    image[0, 4:24, 13:15] = 1
    tensor.set_data_from_numpy(image, **({"binary_data": False} if protocol == "http" else {}))
    result = triton.infer("ensemble", [tensor], model_version=version)
    named = result.get_response()["model_version"] if protocol == "http" else result.get_response().model_version
    return int(result.as_numpy("votes").sum()), named


def votes(triton, protocol: str, version: str = "") -> int:
    return answer(triton, protocol, version)[0]


def answering(server, protocol: str = "http") -> str:
    return metadata(server, protocol, "ensemble")["parameters"]["version"]


def wait_for(condition, seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(0.1)


def server_log(process) -> str:
    """Its stderr so far, read through a file description of our own (the server's write offset stays put)."""
    with open(f"/proc/self/fd/{process.log.fileno()}") as log:
        return log.read()


def ready_status(server) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server['ports']['http']}/v2/health/ready", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metadata_shows_the_versions_loaded_and_the_one_answering(server, protocol):
    about = metadata(server, protocol, "ensemble")
    assert about["versions"] == ["1"] and about["parameters"]["version"] == "1"
    assert about["parameters"]["networks"] == OLD
    assert metadata(server, protocol, "small")["versions"] == ["1"]
    triton = client(server, protocol)
    assert votes(triton, protocol) == OLD and votes(triton, protocol, "1") == OLD
    with pytest.raises(InferenceServerException) as missing:
        votes(triton, protocol, "2")
    assert missing.value.status() in ("404", "StatusCode.NOT_FOUND")


def test_a_new_version_takes_over_under_load_without_an_error(server, base, three_networks):
    """Two REST and two gRPC clients ask without a pause while version 2 is copied in, loaded and takes over.
    Every answer names the version that gave it, and the metrics count each version's answers."""
    answers = {worker: [] for worker in range(4)}  # worker -> the vote totals it got, in order
    named = []  # (votes, the version the answer names)
    errors, readiness = [], []
    done = threading.Event()

    def work(worker: int, protocol: str):
        triton = client(server, protocol)
        deadline = time.monotonic() + 120
        while not done.is_set() and len(answers[worker]) < 5000 and time.monotonic() < deadline:
            try:
                got = answer(triton, protocol)
                answers[worker].append(got[0])
                named.append(got)
            except Exception as error:  # noqa: BLE001 - every failure is counted and shown
                errors.append(repr(error))

    def probe():  # without a pause: the probes are one more client
        while not done.is_set():
            readiness.append(ready_status(server))
    threads = [threading.Thread(target=work, args=(worker, protocol), daemon=True)
               for worker, protocol in enumerate(PROTOCOLS * 2)] + [threading.Thread(target=probe, daemon=True)]
    before = scrape(server)
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(got) >= 10 for got in answers.values()), what="10 answers from each client")
        copy_in(three_networks, base, 2, release=release_record(2, 1, 0.997))
        wait_for(lambda: answering(server) == "2", what="version 2 answering")
        counts = [len(got) for got in answers.values()]
        wait_for(lambda: all(len(got) >= count + 30 for got, count in zip(answers.values(), counts)),
                 what="30 more answers from each client")
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    moved = scrape(server)
    moved.subtract(before)
    assert not errors, errors[:3]
    assert readiness and set(readiness) == {200}
    assert set(named) == {(OLD, "1"), (NEW, "2")}
    assert by_version(moved, "mnist_serve_inference_requests_total", model="ensemble", outcome="answered") == {
        "1": sum(got == OLD for got, _ in named), "2": sum(got == NEW for got, _ in named)}
    for got in answers.values():  # version 1, then version 2 and never 1 again
        assert got[0] == OLD and got[-1] == NEW and got == sorted(got, reverse=True) and set(got) == {OLD, NEW}
    for protocol in PROTOCOLS:
        triton = client(server, protocol)
        assert votes(triton, protocol) == NEW and votes(triton, protocol, "2") == NEW
        with pytest.raises(InferenceServerException) as retired:
            votes(triton, protocol, "1")
        assert retired.value.status() in ("404", "StatusCode.NOT_FOUND")
        about = metadata(server, protocol, "ensemble")
        assert about["versions"] == ["2"] and about["parameters"]["version"] == "2"
        assert about["parameters"]["networks"] == NEW
        with pytest.raises(InferenceServerException) as gone:  # version 2 is a bundle alone: it has no stages
            metadata(server, protocol, "small")
        assert gone.value.status() in ("404", "StatusCode.NOT_FOUND")
    log = server_log(server["process"])
    assert f"Version 1 in {base} has no release.json (copied in by hand, not pushed by mnist-push)" in log
    assert re.search(rf"Version 2 in {re.escape(str(base))} answers now \(accuracy 0.9970 by its release.json\); "
                     r"version 1 \(accuracy 0\.\d{4} by its bundle's manifest\) is retired", log)
    card = metadata(server, "grpc", "ensemble")["parameters"]  # as gRPC carries it: str, int and bool only
    assert card["release_version"] == 2 and card["release_parent"] == 1 and card["release_sample"] is False
    assert card["release_accuracy_float32"] == "0.997" and card["release_gate_verdict"] == "blessed"
    assert card["release_recall"].startswith("0.999, 0.998, 0.997") and "release_gate_parent_accuracy" not in card


def test_a_damaged_version_is_refused_once_and_the_served_one_goes_on(server, base, three_networks):
    copy_in(three_networks, base, 3, damaged=True)
    refusal = f"Version 3 in {base} is refused: {base / '3' / 'ensemble.onnx'} does not match its SHA-256"
    wait_for(lambda: refusal in server_log(server["process"]), 30, "the refusal in the log")
    time.sleep(4 * POLL_SECONDS)
    lines = [line for line in server_log(server["process"]).splitlines() if refusal in line]
    assert len(lines) == 1 and lines[0].endswith("; version 2 goes on serving.")
    assert ready_status(server) == 200
    for protocol in PROTOCOLS:
        assert votes(client(server, protocol), protocol) == NEW and answering(server, protocol) == "2"


def test_a_withdrawn_version_falls_back_and_a_restored_one_answers_again(server, base):
    """mnist-push --rollback writes withdrawn.json (here by hand): the server moves to version 1 without a restart."""
    (base / "2" / WITHDRAWN).write_text(json.dumps({"withdrawn_at": "2026-12-06T06:00:00+00:00"}))
    wait_for(lambda: answering(server) == "1", what="version 1 answering once 2 is withdrawn")
    for protocol in PROTOCOLS:
        assert answer(client(server, protocol), protocol) == (OLD, "1")
    (base / "2" / WITHDRAWN).unlink()
    wait_for(lambda: answering(server) == "2", what="version 2 answering once restored")
    assert answer(client(server, "grpc"), "grpc") == (NEW, "2")


def test_removing_the_served_version_brings_back_the_highest_left(server, base):
    """Version 3 stays refused; version 1 is the highest complete version left once 2 is gone."""
    shutil.rmtree(base / "2")
    wait_for(lambda: answering(server) == "1", what="version 1 answering again")
    for protocol in PROTOCOLS:
        assert votes(client(server, protocol), protocol) == OLD
        assert metadata(server, protocol, "ensemble")["versions"] == ["1"]


def test_sighup_without_polling_and_a_damaged_highest_version_at_start(tmp_path, bundle, three_networks):
    """--poll-seconds 0: only SIGHUP looks again. At start the damaged version 2 is refused and 1 is served."""
    shutil.copytree(bundle, tmp_path / "1")
    copy_in(bundle, tmp_path, 2, damaged=True)
    process, ports = start([*module_command("inference.server"), "--models", str(tmp_path),
                               "--poll-seconds", "0"])
    server = {"ports": ports}
    try:
        assert answering(server) == "1"
        assert f"Version 2 in {tmp_path} is refused" in server_log(process)
        copy_in(three_networks, tmp_path, 3)
        time.sleep(1.5)
        assert answering(server) == "1"
        os.kill(process.pid, signal.SIGHUP)
        wait_for(lambda: answering(server) == "3", 60, "version 3 answering after SIGHUP")
        assert votes(client(server, "grpc"), "grpc") == NEW
    finally:
        stop(process)


def test_a_base_without_a_complete_version_exits_2_with_one_sentence(tmp_path, bundle):
    (tmp_path / "1").mkdir()
    shutil.copyfile(bundle / "manifest.json", tmp_path / "1" / "not-yet-a-manifest.json")
    done = subprocess.run([*module_command("inference.server"), "--models", str(tmp_path),
                           "--http-port", str(free_port()), "--grpc-port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "holds no complete version" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_mlserver_registry_never_shows_a_request_a_version_that_is_not_ready(tmp_path, bundle):
    """What the swap relies on in MLServer 1.7.1's private registry: version 1 answers, then 2, always ready;
    a retired version answers what it holds."""
    shutil.copytree(bundle, tmp_path / "1")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "tests" / "rollout_registry_probe.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"states": [["1", True, True], ["2", True, True]],
                                       "in_flight_answered_first": True}


def test_require_release_refuses_a_version_copied_in_by_hand(tmp_path, bundle, three_networks):
    """--require-release: version 2 (no release.json) and 3 (an unreadable one) are refused, one line each."""
    copy_in(bundle, tmp_path, 1, release=release_record(1, None, 0.9969))
    copy_in(three_networks, tmp_path, 2)
    copy_in(three_networks, tmp_path, 3)
    (tmp_path / "3" / RELEASE).write_text("{not json")
    process, ports = start([*module_command("inference.server"), "--models", str(tmp_path), "--require-release"])
    server = {"ports": ports}
    try:
        assert answering(server) == "1" and answer(client(server, "http"), "http") == (OLD, "1")
        log = server_log(process)
        assert len(re.findall(rf"Version 2 in {re.escape(str(tmp_path))} is refused: {re.escape(str(tmp_path / '2'))} "
                              r"has no release.json \(copied in by hand, not pushed by mnist-push\), and "
                              r"--require-release refuses such a version; a lower one is tried\.", log)) == 1
        assert len(re.findall(r"Version 3 in .* is refused: .*release.json cannot be read as JSON", log)) == 1
        assert "served without a release card" not in log  # version 1 has its card
    finally:
        stop(process)
