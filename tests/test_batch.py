"""mnist-batch: a real Ray Data pipeline over 2,000 files, on the local runner and on a two-node cluster on loopback."""
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("ray", reason="the batch extra (ray[data]) is not installed")

import psutil  # noqa: E402 - Ray's dependency

from mnist_cnn_progression.inference import batch  # noqa: E402
from mnist_cnn_progression.inference.batch import Progress, classify_files, input_files, main  # noqa: E402
from mnist_cnn_progression.inference.predict import classify  # noqa: E402
from conftest import free_port, module_command  # noqa: E402

pytestmark = pytest.mark.slow  # every test here runs a Ray pipeline

REPO = Path(__file__).resolve().parents[1]
PICTURES = 1993
BAD = {"empty.png": "The file is empty.",
       "notes.txt": "The file is not an image (PNG, JPEG, ...), a .npy array or an IDX file.",
       "truncated.png": "The image file is truncated or corrupt.",
       "objects.npy": "The array holds Python objects (pickled data), which are never loaded.",
       "nan.npy": "The image contains NaN or infinite values."}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mnist_digits):
    """2,000 files: 1,993 digits as PNG (dark ink on light paper, in two folders), 10 in a .npy, 5 in an IDX file,
    5 bad files, and a hidden file that is not an input. Returns (directory, the digits' labels by path)."""
    images, labels = mnist_digits
    root = tmp_path_factory.mktemp("batch_inputs")
    digits = np.round(images[..., 0] * 255).astype(np.uint8)
    truth = {}
    for k in range(PICTURES):
        path = root / f"part{k % 2}" / f"digit{k:04d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(255 - digits[k]).save(path)
        truth[str(path)] = int(labels[k])
    np.save(root / "ten.npy", digits[PICTURES:PICTURES + 10])
    truth.update({f"{root / 'ten.npy'}[{i}]": int(labels[PICTURES + i]) for i in range(10)})
    idx = digits[PICTURES + 10:PICTURES + 15]
    (root / "five-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + np.array(idx.shape, ">u4").tobytes() + idx.tobytes())
    truth.update({f"{root / 'five-idx3-ubyte'}[{i}]": int(labels[PICTURES + 10 + i]) for i in range(5)})
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not a digit\n")
    (root / "truncated.png").write_bytes((root / "part0" / "digit0000.png").read_bytes()[:60])
    np.save(root / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(root / "nan.npy", np.full((28, 28), np.nan, np.float32))
    (root / ".hidden.png").write_bytes((root / "part0" / "digit0000.png").read_bytes())
    assert len(input_files(str(root))) == 2000
    return root, truth


@pytest.fixture(scope="module")
def first_run(inputs, bundle, tmp_path_factory):
    """The command run once on the local runner: (exit code, output directory)."""
    output = tmp_path_factory.mktemp("batch_out") / "out"
    yield main(["--input", str(inputs[0]), "--output", str(output), "--models", str(bundle)]), output
    import ray
    ray.shutdown()


def read(output: Path):
    return (pq.read_table(output / "predictions.parquet").to_pylist(),
            pq.read_table(output / "errors.parquet").to_pylist(),
            json.loads((output / "manifest.json").read_text()))


def test_every_image_of_2000_files_is_a_prediction_or_an_error_as_mnist_predict_gives_it(inputs, bundle, first_run):
    code, output = first_run
    predictions, errors, manifest = read(output)
    expected = {record["path"]: record for record in classify([inputs[0]], bundle)}  # a plain loop, same decode
    assert code == 1 and manifest["files"] == 2000
    assert len(predictions) + len(errors) == manifest["images"] == len(expected) == PICTURES + 10 + 5 + len(BAD)
    assert len(predictions) == manifest["predictions"] and len(errors) == manifest["errors"]
    assert {row["path"]: row["error"] for row in errors} == {
        path: record["error"] for path, record in expected.items() if "error" in record}
    assert {Path(row["path"]).name: row["error"] for row in errors if "digit" not in row["path"]} == BAD
    for row in predictions:
        record = expected[row["path"]]
        assert (row["class"], row["votes"], row["warning"]) == (record["class"], record["votes"], record.get("warning"))
        assert np.allclose(row["probabilities"], record["probabilities"], atol=1e-6)
        assert row["confidence"] == pytest.approx(record["confidence"], abs=1e-6)
    right = np.mean([row["class"] == inputs[1][row["path"]] for row in predictions])
    assert right > 0.85, right
    assert [row["path"] for row in predictions] == sorted(row["path"] for row in predictions)  # input order
    assert len(manifest["workers"]) == os.cpu_count() and sum(w["images"] for w in manifest["workers"]) == len(expected)


def test_a_rerun_replaces_the_output_and_an_interrupted_run_leaves_the_finished_one(inputs, bundle, first_run,
                                                                                     monkeypatch):
    _, output = first_run
    before = read(output)
    files = input_files(str(inputs[0]))
    manifest = classify_files(files, bundle, output)
    after = read(output)
    assert after[0] == before[0] and after[1] == before[1]  # the same rows, once
    assert manifest == after[2] and manifest["images"] == before[2]["images"]

    class Interrupted(Exception):
        pass

    def interrupt(*args):
        raise Interrupted
    monkeypatch.setattr(pq.ParquetWriter, "write_table", interrupt)
    with pytest.raises(Interrupted):
        classify_files(files[:100], bundle, output)
    assert read(output) == after  # the finished output, untouched
    assert sorted(p.name for p in output.iterdir()) == ["errors.parquet", "manifest.json", "predictions.parquet"]
    assert [p.name for p in output.parent.iterdir() if p != output and output.name in p.name] == []  # nor a partial
    monkeypatch.undo()
    assert classify_files(files[:100], bundle, output)["files"] == 100



PROGRESS = re.compile(r"mnist-batch: ([\d,]+) of 2,000 files \(\d+%\), [\d,]+ files/s, (about .+ left|done in .+)")


@pytest.fixture
def ray_tmpdir():
    """A directory of Ray's own for one run of the command (RAY_TMPDIR), short enough for its sockets' paths."""
    directory = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def start_command(inputs: Path, bundle: Path, output: Path, ray_tmpdir: Path) -> subprocess.Popen:
    """`mnist-batch` on a local Ray, as a user starts it, its stderr a pipe (not a terminal)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    return subprocess.Popen([*module_command("inference.batch"), "--input", str(inputs), "--output", str(output),
                             "--models", str(bundle)], env={**env, "RAY_TMPDIR": str(ray_tmpdir)}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_only_progress(stderr: str) -> None:
    """stderr holds progress lines, a line per tenth of the files at most, the last one the whole count; no Ray line."""
    lines = stderr.splitlines()
    assert all(PROGRESS.fullmatch(line) for line in lines), stderr[-3000:]
    assert 2 <= len(lines) <= 11 and lines[-1].startswith("mnist-batch: 2,000 of 2,000 files (100%)")
    counts = [int(PROGRESS.fullmatch(line)[1].replace(",", "")) for line in lines]
    assert counts == sorted(set(counts))


def test_the_command_prints_its_progress_and_leaves_ray_lines_in_ray_logs(inputs, bundle, tmp_path, ray_tmpdir):
    run = start_command(inputs[0], bundle, tmp_path / "out", ray_tmpdir)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 1 and json.loads(stdout)["images"] == PICTURES + 10 + 5 + len(BAD), stderr[-3000:]
    assert_only_progress(stderr)  # none of the lines Ray printed there: its token-auth WARNING, its core_worker error,
    # "Progress bars disabled", "Dataset ... execution finished"
    logs = ray_tmpdir / "ray" / "session_latest" / "logs"
    kept = (logs / f"mnist-batch-{run.pid}.err").read_text()
    for ray_line in ("Token authentication is enabled", "core_worker", "Progress bars disabled"):
        assert ray_line in kept  # Ray's lines, in Ray's logs


def test_a_worker_killed_mid_run_is_restarted_and_none_of_its_files_is_lost(inputs, bundle, tmp_path, ray_tmpdir):
    """Ray Data hands its actors their constructor arguments through the object store, which Ray's core worker
    reports as an error because a restart would fail if they were gone. The driver holds them while the run lasts:
    a worker killed halfway is restarted and its batch done again."""
    run = start_command(inputs[0], bundle, tmp_path / "out", ray_tmpdir)
    stderr = [run.stderr.readline()]  # the first tenth of the files is done: every worker is at work
    assert PROGRESS.fullmatch(stderr[0].strip()), stderr[0] + run.stderr.read()[-3000:]
    workers = [child for child in psutil.Process(run.pid).children(recursive=True)
               if "Classifier" in " ".join(child.cmdline())]
    assert workers
    workers[0].kill()
    stdout, rest = run.communicate(timeout=300)
    assert run.returncode == 1, rest[-3000:]
    assert_only_progress("".join(stderr) + rest)
    predictions, errors, manifest = read(tmp_path / "out")
    expected = classify([inputs[0]], bundle)
    assert {row["path"]: row["class"] for row in predictions} == {
        record["path"]: record["class"] for record in expected if "error" not in record}  # every image, classified
    assert len(errors) == len(BAD)
    pids = {int(worker["worker"].split("/")[1]) for worker in manifest["workers"]}
    assert pids - {worker.pid for worker in workers}  # the restarted worker took its share



def test_on_a_terminal_the_progress_line_is_rewritten_in_place_and_ends_with_the_count():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal, files = Terminal(), [f"{k}.png" for k in range(100)]
    progress = Progress(files, terminal)
    for file in files:
        progress.done_up_to(file)
    progress.finish()
    lines = terminal.getvalue().split("\r\033[K")
    assert lines[0] == "" and terminal.getvalue().count("\n") == 1
    assert re.fullmatch(r"mnist-batch: 100 of 100 files \(100%\), [\d,]+ files/s, done in \d+ s\n", lines[-1])


@pytest.mark.parametrize("where, sentence", [
    ("afile/out", "afile cannot be made a directory (File exists)"), ("afile", "it is a file, not a directory")])
def test_an_output_that_cannot_be_written_is_one_sentence_before_any_work(bundle, tmp_path, where, sentence):
    (tmp_path / "afile").write_text("")
    np.save(tmp_path / "digits.npy", np.zeros((2, 28, 28), np.uint8))
    done = subprocess.run([*module_command("inference.batch"), "--input", str(tmp_path / "digits.npy"), "--output",
                           str(tmp_path / where), "--models", str(bundle)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(f"error: cannot write the output to {tmp_path / where}: ")
    assert sentence in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_when_ray_cannot_start_its_lines_reach_stderr_and_stderr_is_restored(monkeypatch, capfd):
    def failing_start(address):
        os.write(2, b"Ray: cannot reach the cluster\n")
        raise ConnectionError("no cluster")
    monkeypatch.setattr(batch, "connect", failing_start)
    with pytest.raises(ConnectionError):
        classify_files(["a.png"], Path("bundle"), Path("out"), address="127.0.0.1:1")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "Ray: cannot reach the cluster\nafter\n"



def ray_node(*args: str, env: dict) -> subprocess.Popen:
    """`ray start --block` with the ports a second node on the same machine must not share."""
    ports = [f"--{name}-port={free_port()}" for name in
             ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export", "runtime-env-agent")]
    ray = Path(sys.executable).with_name("ray")
    return subprocess.Popen([str(ray), "start", "--block", "--num-cpus=1", "--disable-usage-stats", *ports, *args],
                            env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(node: subprocess.Popen) -> None:
    """End a node: its `ray start` and the Ray processes it started, which share its process group."""
    for stop_signal in (signal.SIGTERM, signal.SIGKILL):
        os.killpg(node.pid, stop_signal)
        try:
            node.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def test_a_two_node_ray_cluster_on_loopback_shares_the_work_between_its_nodes(inputs, bundle, tmp_path):
    """Two nodes as `ray start` makes them on two machines, here on 127.0.0.2 and 127.0.0.3, one CPU each."""
    head_address = f"127.0.0.2:{free_port()}"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},  # the local runner's
           "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    nodes = [ray_node("--head", f"--port={head_address.split(':')[1]}", "--node-ip-address=127.0.0.2",
                      "--include-dashboard=false", f"--dashboard-port={free_port()}",
                      f"--ray-client-server-port={free_port()}", env=env)]
    try:
        nodes.append(ray_node(f"--address={head_address}", "--node-ip-address=127.0.0.3", env=env))
        ray = Path(sys.executable).with_name("ray")
        deadline = time.monotonic() + 120
        while subprocess.run([str(ray), "status", f"--address={head_address}"], env=env, capture_output=True,
                             text=True, timeout=60).stdout.count(" node_") < 2:
            assert time.monotonic() < deadline, "the two-node cluster did not come up"
            time.sleep(1)
        output = tmp_path / "out"
        result = subprocess.run([*module_command("inference.batch"), "--input", str(inputs[0] / "part0"),
                                 "--output", str(output), "--models", str(bundle), "--address", head_address],
                                env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        predictions, errors, manifest = read(output)
        assert json.loads(result.stdout.splitlines()[-1])["images"] == len(predictions) == (PICTURES + 1) // 2
        assert not errors and manifest["address"] == head_address
        assert len({worker["worker"].split("/")[0] for worker in manifest["workers"]}) == 2  # both nodes worked
        local = {record["path"]: record["class"] for record in classify([inputs[0] / "part0"], bundle)}
        assert {row["path"]: row["class"] for row in predictions} == local
    finally:
        for node in reversed(nodes):
            stop(node)
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` names its cluster there for a bare ray.init
        if current.is_file() and current.read_text().strip() == head_address:
            current.unlink()
