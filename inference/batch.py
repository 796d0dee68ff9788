"""Batch inference on Ray Data: `mnist-batch --input DIR|GLOB --output OUT --models RUN_DIR|BUNDLE [--address ADDR]`.

The files under DIR (or matching GLOB: pictures, .npy arrays, IDX files) are
spread over Ray workers. Each worker is an actor that loads the ensemble once,
then decodes its batches of files as mnist-predict does (inference.pictures)
and classifies them with ONNX Runtime, one thread per worker. The driver
streams the results into OUT/predictions.parquet (path, class, votes,
probabilities, confidence, warning), OUT/errors.parquet (path, error: the
sentence mnist-predict prints) and OUT/manifest.json (the counts), in input
order. Every image found is in one of the two files: images = predictions + errors.

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
import sys
import time
from collections import Counter
from pathlib import Path

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
# What a worker sends back: both kinds of record in one table (error is null for a prediction) and who made it.
WORKER_OUTPUT = pa.schema([*PREDICTIONS, ("error", pa.string()), ("worker", pa.string())])


class Classifier:
    """A Ray worker: the ensemble, loaded once, classifies every batch of files sent to this worker."""

    def __init__(self, models: str):
        import ray
        self.ensemble = Ensemble.load(Path(models), threads=1)
        self.worker = f"{ray.get_runtime_context().get_node_id()[:12]}/{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded = [record for file in batch.column("file").to_pylist() for record in decoded_file(file)]
        rows = [{**record, "worker": self.worker} for record in records(decoded, self.ensemble, "vote")]
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


def connect(address: str | None):
    """Ray: the cluster at address (or RAY_ADDRESS), else a local one on this machine's CPUs, quiet."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent anywhere
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # "local": a new Ray of its own (ray.init would join a cluster that `ray start` left on this machine), in
        # Ray's single-machine mode, which keeps its addresses on the loopback, not the machine's network address.
        address = "local"
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


def classify_files(files: list[str], models: Path, output: Path, *, address: str | None = None,
                   workers: int | None = None) -> dict:
    """Classify every image in files on Ray with `workers` workers (default: one per CPU of the cluster) into output.

    Returns the manifest written last into output.
    """
    ray = connect(address)
    started = time.perf_counter()
    workers = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
    dataset = ray.data.from_items([{"file": file} for file in files]).map_batches(
        Classifier, fn_constructor_kwargs={"models": str(models)}, batch_size=FILES_PER_BATCH,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)
    by_worker = Counter()
    with staged_directory(output) as partial:  # moved into place whole, or removed
        with pq.ParquetWriter(partial / "predictions.parquet", PREDICTIONS) as predictions, \
                pq.ParquetWriter(partial / "errors.parquet", ERRORS) as errors:
            for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                by_worker.update(table.column("worker").to_pylist())
                failed = table.column("error").is_valid()
                predictions.write_table(table.filter(pc.invert(failed)).select(PREDICTIONS.names))
                errors.write_table(table.filter(failed).select(ERRORS.names))
        counts = {name: pq.read_metadata(partial / f"{name}.parquet").num_rows for name in ("predictions", "errors")}
        manifest = {"files": len(files), "images": sum(counts.values()), **counts, "models": str(models),
                    "engine": f"ray {ray.__version__}", "address": address or os.environ.get("RAY_ADDRESS") or "local",
                    "workers": [{"worker": worker, "images": images} for worker, images in sorted(by_worker.items())],
                    "seconds": round(time.perf_counter() - started, 3)}
        write_json(partial / "manifest.json", manifest)
    return manifest


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
    manifest = classify_files(files, models, args.output, address=args.address, workers=args.workers)
    print(json.dumps({key: manifest[key] for key in ("files", "images", "predictions", "errors", "seconds")}))
    return 1 if manifest["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
