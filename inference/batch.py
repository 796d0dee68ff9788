"""Batch inference on Ray Data: `mnist-batch --input DIR|GLOB --output OUT --models RUN_DIR|BUNDLE [--address ADDR]`.

The files under DIR (or matching GLOB: pictures, .npy arrays, IDX files) are
spread over Ray workers. Each worker is an actor that loads the ensemble once,
then decodes its batches of files as mnist-predict does (inference.pictures)
and classifies them with ONNX Runtime, one thread per worker. The driver
streams the results into OUT/predictions.parquet (path, class, votes,
probabilities, confidence, warning), OUT/errors.parquet (path, error: the
sentence mnist-predict prints) and OUT/manifest.json (the counts), in input
order. Every image found is in one of the two files: images = predictions + errors.
A progress line on stderr (files done of all, their rate, the time left) is
rewritten about once a second on a terminal, and printed for every tenth of
the files otherwise. Ray's own lines go to its session's logs, not stderr
(this command's in /tmp/ray/session_latest/logs/mnist-batch-PID.err, locally).

OUT is built beside itself under a temporary name and moved into place
whole, so a rerun replaces the previous output instead of adding to it, and an
interrupted run leaves the previous output (or none), never a part of one.

Without --address Ray starts on this machine and stops at the end. With
--address HOST:PORT (a cluster started by `ray start --head`; `auto` finds one
on this machine; or the RAY_ADDRESS variable) the work spreads over the
cluster's nodes: every node needs this package installed and must see the
inputs and the models at the same paths (a shared filesystem); the driver
writes OUT. Imports no TensorFlow.
"""
import argparse
import glob
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mnist_cnn_progression.inference.files import staged_directory, write_json
from mnist_cnn_progression.inference.ensemble import Ensemble, bundle_dir
from mnist_cnn_progression.inference.pictures import InputError, files_under, read_inputs
from mnist_cnn_progression.inference.predict import records

FILES_PER_BATCH = 64   # a worker's unit of work: small enough to spread 2,000 files over many workers
PREDICTIONS = pa.schema([("path", pa.string()), ("class", pa.int64()), ("votes", pa.list_(pa.int64())),
                         ("probabilities", pa.list_(pa.float32())), ("confidence", pa.float32()),
                         ("warning", pa.string())])
ERRORS = pa.schema([("path", pa.string()), ("error", pa.string())])
# What a worker sends back: both kinds of record in one table (error is null for a prediction), the file each
# record comes from (for the progress line) and who made it.
WORKER_OUTPUT = pa.schema([*PREDICTIONS, ("error", pa.string()), ("file", pa.string()), ("worker", pa.string())])
PROGRESS_SECONDS = 1.0  # on a terminal, the progress line is rewritten this often
PROGRESS_STEPS = 10     # elsewhere (a log file), a progress line for every tenth of the files: eleven lines in all


class Classifier:
    """A Ray worker: the ensemble, loaded once, classifies every batch of files sent to this worker."""

    def __init__(self, models: str):
        import ray
        self.ensemble = Ensemble.load(Path(models), threads=1)
        self.worker = f"{ray.get_runtime_context().get_node_id()[:12]}/{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded = [(file, pair) for file in batch.column("file").to_pylist() for pair in decoded_file(file)]
        classified = records([pair for _, pair in decoded], self.ensemble, "vote")  # one ensemble call, same order
        rows = [{**record, "file": file, "worker": self.worker} for (file, _), record in zip(decoded, classified)]
        return pa.Table.from_pylist(rows, schema=WORKER_OUTPUT)


def decoded_file(file: str) -> list:
    """The (label, image or InputError) pairs of one file; a failure the picture code did not foresee is an error
    of this file alone, so that one strange file cannot stop a run over millions."""
    try:
        return list(read_inputs(Path(file)))
    except Exception as error:  # noqa: BLE001 - reported as this file's error row, with its kind
        return [(file, InputError(f"The file could not be decoded ({type(error).__name__}: {error})."))]


def input_files(source: str) -> list[str]:
    """The files of a directory (recursively, skipping hidden names, as mnist-predict does) or of a glob, sorted."""
    if Path(source).is_dir():
        return [str(file) for file in files_under(Path(source))]
    matches = sorted(glob.glob(source, recursive=True))
    return [file for match in matches for file in (input_files(match) if Path(match).is_dir() else [match])]


def connect(address: str | None) -> Path:
    """Ray: the cluster at address (or RAY_ADDRESS), else a local one on this machine's CPUs, quiet.

    Returns the directory of the Ray session's log files on this machine.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent anywhere
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # "local": a new Ray of its own (ray.init would join a cluster that `ray start` left on this machine), in
        # Ray's single-machine mode, which keeps its addresses on the loopback, not the machine's network address.
        address = "local"
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    session = ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning",
                       ignore_reinit_error=True)  # a Ray already started in this process is used as it is
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return Path(session.address_info["session_dir"]) / "logs"


@contextmanager
def ray_session(address: str | None) -> Iterator[TextIO]:
    """Ray connected (connect), this process's stderr kept among its logs while it runs; yields the real stderr.

    Ray writes to the driver's stderr beyond what its options turn off: a WARNING that it chose token authentication,
    each error line of its C++ core worker (its python-core-driver log has them too), Ray Data's notices (its
    ray-data.log too). The core worker's error, that an actor's constructor arguments are in the object store, is
    about Ray Data's own arguments to every actor pool, which the driver holds while the run lasts: a worker that
    dies is restarted (tests/test_batch.py kills one). They are Ray's business, not the user's: file descriptor 2 is
    a temporary file while Ray starts (shown if it cannot), then mnist-batch-PID.err among the session's logs,
    which gets the first lines too. The real stderr is back before an exception leaves.
    """
    sys.stderr.flush()
    terminal = os.dup(2)
    try:
        with tempfile.TemporaryFile() as starting:
            os.dup2(starting.fileno(), 2)
            try:
                logs = connect(address)
            except BaseException:
                sys.stderr.flush()
                starting.seek(0)
                os.write(terminal, starting.read())
                raise
            sys.stderr.flush()
            with open(logs / f"mnist-batch-{os.getpid()}.err", "ab") as log:
                os.dup2(log.fileno(), 2)
                starting.seek(0)
                shutil.copyfileobj(starting, log)
        with os.fdopen(os.dup(terminal), "w") as stream:
            yield stream
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)


def duration(seconds: float) -> str:
    """A time span for a person: 42 s, 17 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


class Progress:
    """The progress line: files done of all, files per second and the time left.

    On a terminal it is rewritten in place about once a second; anywhere else (a log file, a pipe) a line is printed
    for every tenth of the files, so that a run over millions of files still writes eleven lines.
    """

    def __init__(self, files: list[str], stream: TextIO):
        self.position = {file: index for index, file in enumerate(files)}
        self.total, self.stream, self.live = len(files), stream, stream.isatty()
        self.started = self.shown = time.perf_counter()
        self.step = 0  # the tenths of the files already reported, off a terminal

    def done_up_to(self, file: str) -> None:
        """Every file up to this one is classified (the results come in input order): report it, if it is time to."""
        done, now = self.position[file] + 1, time.perf_counter()
        if self.live:
            if now - self.shown < PROGRESS_SECONDS:
                return
            self.shown = now
        elif done * PROGRESS_STEPS // self.total <= self.step or done == self.total:
            return  # the last line is finish's
        self.step = done * PROGRESS_STEPS // self.total
        rate = done / (now - self.started)
        self.write(done, rate, f"about {duration((self.total - done) / rate)} left")

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.started
        self.write(self.total, self.total / elapsed, f"done in {duration(elapsed)}", last=True)

    def write(self, done: int, rate: float, end: str, last: bool = False) -> None:
        line = f"mnist-batch: {done:,} of {self.total:,} files ({done / self.total:.0%}), {rate:,.0f} files/s, {end}"
        if self.live:  # back to the line's start and clear it; a new line only after the last one
            line = f"\r\033[K{line}" + ("\n" if last else "")
        else:
            line += "\n"
        self.stream.write(line)
        self.stream.flush()


def classify_files(files: list[str], models: Path, output: Path, *, address: str | None = None,
                   workers: int | None = None) -> dict:
    """Classify every image in files on Ray with `workers` workers (default: one per CPU of the cluster) into output.

    Returns the manifest written last into output.
    """
    with ray_session(address) as terminal:
        import ray
        started = time.perf_counter()
        workers = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        dataset = ray.data.from_items([{"file": file} for file in files]).map_batches(
            Classifier, fn_constructor_kwargs={"models": str(models)}, batch_size=FILES_PER_BATCH,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)
        with staged_directory(output) as partial:  # moved into place whole, or removed
            by_worker = write_results(dataset, partial, Progress(files, terminal))
            counts = {name: pq.read_metadata(partial / f"{name}.parquet").num_rows
                      for name in ("predictions", "errors")}
            manifest = {"files": len(files), "images": sum(counts.values()), **counts, "models": str(models),
                        "engine": f"ray {ray.__version__}",
                        "address": address or os.environ.get("RAY_ADDRESS") or "local",
                        "workers": [{"worker": worker, "images": images}
                                    for worker, images in sorted(by_worker.items())],
                        "seconds": round(time.perf_counter() - started, 3)}
            write_json(partial / "manifest.json", manifest)
    return manifest


def write_results(dataset, directory: Path, progress: Progress) -> Counter:
    """The workers' tables, as they come (in input order), into directory's predictions.parquet and errors.parquet.

    Returns the images each worker classified.
    """
    by_worker = Counter()
    with pq.ParquetWriter(directory / "predictions.parquet", PREDICTIONS) as predictions, \
            pq.ParquetWriter(directory / "errors.parquet", ERRORS) as errors:
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            by_worker.update(table.column("worker").to_pylist())
            failed = table.column("error").is_valid()
            predictions.write_table(table.filter(pc.invert(failed)).select(PREDICTIONS.names))
            errors.write_table(table.filter(failed).select(ERRORS.names))
            if table.num_rows:
                progress.done_up_to(table.column("file")[-1].as_py())
    progress.finish()
    return by_worker


def output_problem(output: Path) -> str | None:
    """Why OUT cannot be written, as the end of a sentence; None when it can (its parent made if need be)."""
    if output.exists() and not output.is_dir():
        return "it is a file, not a directory"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"{output.parent} cannot be made a directory ({error.strerror or error})"
    if not os.access(output.parent, os.W_OK):
        return f"{output.parent} is not writable"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, metavar="DIR|GLOB",
                        help="a directory (walked recursively) or a glob (quote it) of pictures, .npy or IDX files")
    parser.add_argument("--output", required=True, type=Path, metavar="OUT",
                        help="the output directory: predictions.parquet, errors.parquet, manifest.json")
    parser.add_argument("--models", required=True, type=Path, metavar="RUN_DIR|BUNDLE",
                        help="a bundle directory or a run directory")
    parser.add_argument("--address", default=None,
                        help="a Ray cluster: HOST:PORT of its head, or auto (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers, one CPU and one ensemble each (default: one per CPU of the cluster)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("ray") is None:
        print("error: mnist-batch needs Ray Data: install the batch extra (from a checkout, "
              "pip install -c constraints.txt './inference[batch]').", file=sys.stderr)
        return 2
    try:
        models = bundle_dir(args.models)
        warning = Ensemble.load(models, threads=1).training_data_warning  # a bad bundle fails here, before Ray starts
    except (OSError, ValueError, KeyError) as error:
        print(f"error: cannot load the models from {args.models}: {error}", file=sys.stderr)
        return 2
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    files = input_files(args.input)
    if not files:
        print(f"error: {args.input} is no directory and matches no file.", file=sys.stderr)
        return 2
    problem = output_problem(args.output)
    if problem:  # found now, not once every file is classified
        print(f"error: cannot write the output to {args.output}: {problem}.", file=sys.stderr)
        return 2
    manifest = classify_files(files, models, args.output, address=args.address, workers=args.workers)
    print(json.dumps({key: manifest[key] for key in ("files", "images", "predictions", "errors", "seconds")}))
    return 1 if manifest["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
