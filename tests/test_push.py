"""mnist-push: the gate between a finished run and the served model, as its users run it (a real process).

Real bundles (conftest's five small networks, ~90%, and a weaker five), real
test images as IDX files, and a real server for the hand-over: a blessed push
becomes the next version and the server answers with it; a rollback brings
back the one before.
"""
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TRAIN, module_command, train_small_net

PUSH = module_command("inference.push")
LOW_FLOOR = ["--min-accuracy", "50"]  # the small networks score ~90%, far under the ensemble's reference


@pytest.fixture(scope="module")
def weaker(tmp_path_factory, mnist_digits):
    """A worse candidate, as a shorter run would make it: five networks trained on 300 digits."""
    from mnist_cnn_progression.export.bundle import build_bundle
    from mnist_cnn_progression.export.tf_export import export_model
    images, labels = mnist_digits
    root = tmp_path_factory.mktemp("weaker")
    paths = []
    for k in range(5):
        model = train_small_net(images[:300], labels[:300], seed=10 + k)
        manifest = export_model(model, root / f"member_{k}", name=f"member_{k}", metadata={"stage": "ensemble"},
                                images=images[TRAIN:])
        paths.append(root / f"member_{k}" / manifest["onnx"])
    build_bundle(paths, root / "bundle", calibration_images=images[:TRAIN], test_images=images[TRAIN:],
                 test_labels=labels[TRAIN:], metadata={"stage": "ensemble"})
    return root / "bundle"


def push(*arguments, check: int | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([*PUSH, *map(str, arguments)], capture_output=True, text=True, timeout=120)
    if check is not None:
        assert done.returncode == check, done.stderr
    return done


def snapshot(base) -> dict:
    """Every file under BASE with its contents' size and modification time: what a reader could see."""
    return {str(path.relative_to(base)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(base.rglob("*")) if path.is_file() and path.name != ".push.lock"}


def release(base, version: int) -> dict:
    return json.loads((base / str(version) / "release.json").read_text())


def test_a_worse_candidate_is_refused_with_exit_3_and_base_unchanged(tmp_path, bundle, weaker, idx_test_set):
    base = tmp_path / "base"
    first = push(bundle, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    assert first.stdout.startswith(f"Version 1 pushed to {base}:") and "(the first version)" in first.stdout
    before = snapshot(base)
    refused = push(weaker, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=3)
    served = release(base, 1)["accuracy"]["float32"]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused: The candidate scores ")
    assert f"{served:.2%}" in lines[0] and "0.05 points (--tolerance) under version 1" in lines[0]
    assert snapshot(base) == before and sorted(p.name for p in base.iterdir()) == [".push.lock", "1"]


def test_the_floor_refuses_a_candidate_under_the_reference_and_says_what_to_lower(tmp_path, bundle, idx_test_set):
    refused = push(bundle, "--to", tmp_path / "base", "--test-data", idx_test_set, check=3)
    assert "under the floor of 99.67% (--min-accuracy" in refused.stderr and "--min-accuracy 8" in refused.stderr
    assert not any((tmp_path / "base").glob("[0-9]*"))


def test_a_better_candidate_becomes_the_next_version_with_its_release(tmp_path, bundle, weaker, idx_test_set):
    base = tmp_path / "base"
    push(weaker, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    done = push(bundle, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    first, second = release(base, 1), release(base, 2)
    assert "Version 2 pushed" in done.stdout and f"against version 1's {first['accuracy']['float32']:.2%}" in done.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert second["accuracy"] == pytest.approx(manifest["test_accuracy"])  # scored again, the same figures
    assert second["errors"]["float32"] == round((1 - manifest["test_accuracy"]["float32"]) * 1000)
    assert second["version"] == 2 and second["parent"] == 1 and len(second["recall"]) == 10
    assert second["gate"] == {"verdict": "blessed", "min_accuracy": 0.5, "tolerance": 0.0005,
                              "parent_accuracy": first["accuracy"]["float32"], "reason": second["gate"]["reason"]}
    assert second["test_digest"] == first["test_digest"] and second["test_images"] == 1000
    assert str(tmp_path) not in (base / "2" / "release.json").read_text()  # no host path
    files = sorted(str(p.relative_to(base / "2")) for p in (base / "2").rglob("*") if p.is_file())
    assert files == sorted([*manifest["files"], "manifest.json", "release.json"])
    listing = push("--list", base, check=0).stdout.splitlines()
    assert listing[0].split()[:2] == ["version", "accuracy"]
    assert listing[1].split()[0] == "1" and "blessed" in listing[1] and "served" not in listing[1]
    assert listing[2].split()[0] == "2" and listing[2].endswith("served")


def test_force_pushes_past_the_gate_and_says_so(tmp_path, bundle, weaker, idx_test_set):
    base = tmp_path / "base"
    push(bundle, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    done = push(weaker, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, "--force", check=0)
    assert "FORCED past the gate" in done.stdout
    gate = release(base, 2)["gate"]
    assert gate["verdict"] == "forced" and "under version 1" in gate["reason"]
    assert "forced" in push("--list", base, check=0).stdout.splitlines()[2]


def test_a_candidate_scored_on_other_test_images_is_refused(tmp_path, bundle, idx_test_set, mnist_digits):
    from mnist_cnn_progression.pipeline.idx import write_idx
    base, other = tmp_path / "base", tmp_path / "other"
    push(bundle, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    images, labels = mnist_digits
    other.mkdir()
    write_idx(other / "t10k-images-idx3-ubyte", np.rint(images[:500, ..., 0] * 255), compress=False)
    write_idx(other / "t10k-labels-idx1-ubyte", labels[:500], compress=False)
    refused = push(bundle, "--to", base, "--test-data", other, *LOW_FLOOR, "--tolerance", "100", check=3)
    assert "scored on other test images than version 1" in refused.stderr and "--test-data" in refused.stderr
    assert sorted(p.name for p in base.iterdir()) == [".push.lock", "1"]


def test_rollback_withdraws_the_served_version_and_restore_undoes_it(tmp_path, bundle, weaker, idx_test_set):
    base = tmp_path / "base"
    push(weaker, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    push(bundle, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    done = push("--rollback", base, check=0)
    assert done.stdout.startswith("Version 2 is withdrawn; version 1 is served now")
    assert (base / "2" / "manifest.json").is_file()  # kept on disk
    listing = push("--list", base, check=0).stdout.splitlines()
    assert listing[1].endswith("served") and "withdrawn" in listing[2] and not listing[2].endswith("served")
    last = push("--rollback", base, check=2)
    assert last.stderr == (f"error: Version 1 is the only version {base} can serve: withdrawing it would leave "
                           "nothing to serve; push another first.\n")
    # a push after a rollback is gated against the version served now, and numbered after every version
    push(weaker, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, "--force", check=0)
    assert release(base, 3)["parent"] == 1
    assert push("--restore", "2", base, check=0).stdout == "Version 2 is restored; version 3 is served now.\n"
    assert push("--restore", "2", base, check=2).stderr.startswith("error: Version 2 in")


@pytest.mark.parametrize("arguments, sentence", [
    (["{missing}", "--to", "{base}"], "is neither an ensemble bundle nor a run directory"),
    (["{bundle}", "--to", "{bundle}"], "is not a base directory of versions"),
    (["{bundle}", "--to", "{base}"], "has no run directory with its test set beside it: name the test images"),
    (["--list", "{base}"], "holds no numbered versions"),
])
def test_bad_input_exits_2_with_one_sentence(tmp_path, bundle, arguments, sentence):
    names = {"missing": tmp_path / "missing", "base": tmp_path / "base", "bundle": bundle}
    done = push(*[argument.format(**names) for argument in arguments], check=2)
    assert done.stderr.startswith("error: ") and sentence in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def damaged_member(tmp_path, bundle, idx_test_set):
    """A bundle copy whose member_1.onnx lost a byte: the fused graphs that are scored are intact."""
    copy = Path(shutil.copytree(bundle, tmp_path / "damaged"))
    member = copy / "members" / "member_1.onnx"
    member.write_bytes(member.read_bytes()[:-1])
    return [copy, "--to", tmp_path / "base", "--test-data", idx_test_set, *LOW_FLOOR]


def corrupt_gzip(tmp_path, bundle, idx_test_set):
    """Test images whose gzip stream is damaged after its header (zlib's error, not an OSError)."""
    data = Path(shutil.copytree(idx_test_set, tmp_path / "test-data"))
    images = data / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:20] + b"\xff" * 200)
    return [bundle, "--to", tmp_path / "base", "--test-data", data, *LOW_FLOOR]


def float_images(tmp_path, bundle, idx_test_set):
    """Test images stored as float32 IDX: not MNIST's unsigned bytes."""
    data = Path(shutil.copytree(idx_test_set, tmp_path / "test-data"))
    pixels = np.zeros((1000, 28, 28), ">f4")
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(
        struct.pack(">HBB", 0, 0x0D, 3) + struct.pack(">3I", *pixels.shape) + pixels.tobytes()))
    return [bundle, "--to", tmp_path / "base", "--test-data", data, *LOW_FLOOR]


@pytest.mark.parametrize("damage, sentence", [
    (damaged_member, "member_1.onnx does not match its SHA-256 in manifest.json: the copy is damaged."),
    (corrupt_gzip, "t10k-images-idx3-ubyte.gz is not a readable gzip file"),
    (float_images, "t10k-images-idx3-ubyte.gz holds float32 values, not the unsigned bytes of MNIST's IDX files."),
])
def test_a_damaged_candidate_or_test_set_exits_2_with_one_sentence_and_writes_nothing(tmp_path, bundle, idx_test_set,
                                                                                      damage, sentence):
    done = push(*damage(tmp_path, bundle, idx_test_set), check=2)
    assert done.stderr.startswith("error: ") and sentence in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "base").exists() or snapshot(tmp_path / "base") == {}


# Run in a child: the push module with its writes counted, and SIGKILL at write number KILL_AT.
KILLED_PUSH = """
import os, signal, sys
from mnist_cnn_progression.inference import push
kill_at, calls = int(sys.argv[1]), [0]
def counted(write):
    def each(*arguments, **keywords):
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return write(*arguments, **keywords)
    return each
push.copy_file, push.write_json, os.rename = counted(push.copy_file), counted(push.write_json), counted(os.rename)
sys.exit(push.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_push_killed_between_any_two_writes_leaves_base_as_it_was(tmp_path, bundle, weaker, idx_test_set):
    base = tmp_path / "base"
    push(weaker, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    before = snapshot(base)
    writes = len(json.loads((bundle / "manifest.json").read_text())["files"]) + 3  # then release, manifest, rename
    for kill_at in sorted({0, 1, writes // 2, writes - 3, writes - 2, writes - 1}):
        done = subprocess.run([sys.executable, "-c", KILLED_PUSH, str(kill_at), str(bundle), "--to", str(base),
                               "--test-data", str(idx_test_set), *LOW_FLOOR], capture_output=True, timeout=120)
        assert done.returncode == -signal.SIGKILL, done.stderr
        visible = {name: entry for name, entry in snapshot(base).items() if not name.startswith(".")}
        assert visible == before, f"killed at write {kill_at}"
        assert push("--list", base, check=0).stdout.splitlines()[1].endswith("served")
    assert any(path.name.startswith(".unfinished-") for path in base.iterdir())  # what the last kill left
    push(bundle, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    assert sorted(p.name for p in base.iterdir()) == [".push.lock", "1", "2"]  # the next push cleaned up
    assert os.path.isfile(base / "2" / "release.json")


@pytest.mark.slow
def test_a_running_server_follows_a_push_and_a_rollback_under_load(tmp_path, bundle, weaker, idx_test_set):
    """The server serves BASE under --require-release while a REST and a gRPC client ask without a pause: a
    blessed push takes over and a rollback brings the old version back, every answer naming its version, no error."""
    from test_rollout import answer, answering, stop, wait_for
    from test_server import PROTOCOLS, client, start
    base = tmp_path / "base"
    push(weaker, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
    process, ports = start([*module_command("inference.server"), "--models", str(base), "--poll-seconds", "0.5",
                            "--require-release"])
    server, answers, errors, done = {"ports": ports}, {protocol: [] for protocol in PROTOCOLS}, [], threading.Event()

    def work(protocol: str):  # bounded: at most 3,000 answers or 180 s
        triton, deadline = client(server, protocol), time.monotonic() + 180
        while not done.is_set() and len(answers[protocol]) < 3000 and time.monotonic() < deadline:
            try:
                answers[protocol].append(answer(triton, protocol)[1])
            except Exception as error:  # noqa: BLE001 - every failure is counted and shown
                errors.append(repr(error))
    threads = [threading.Thread(target=work, args=(protocol,), daemon=True) for protocol in PROTOCOLS]
    try:
        assert answering(server) == "1"
        for thread in threads:
            thread.start()
        push(bundle, "--to", base, "--test-data", idx_test_set, *LOW_FLOOR, check=0)
        wait_for(lambda: all(got[-1:] == ["2"] for got in answers.values()), 60, "answers from version 2")
        push("--rollback", base, check=0)
        wait_for(lambda: all(got[-1:] == ["1"] for got in answers.values()), 60, "answers from version 1 again")
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
        stop(process)
    assert not errors, errors[:3]
    for got in answers.values():  # version 1, then 2, then 1 again: each answer names the version that gave it
        changes = [version for k, version in enumerate(got) if k == 0 or got[k - 1] != version]
        assert changes == ["1", "2", "1"], changes
