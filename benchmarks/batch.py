"""Batch benchmark: images/s of mnist-batch on Ray Data against a plain loop of the same decode and ONNX Runtime.

    python -m benchmarks.batch --models /work/runs/fast          # needs the batch extra (ray[data])
    python -m benchmarks.batch --models /work/runs/fast --beam   # also Apache Beam (in a venv that has it)

The inputs are --images MNIST test digits of the run (data/test_images.npy)
written as PNG files, dark ink on light paper. Every row reads the same
files, decodes them with inference.pictures and classifies them with the
same ensemble: the plain loop is inference.predict.predict_paths in this
process (ONNX Runtime on all cores); Ray is inference.batch.classify_files
with 1 and 2 workers (its time counts from the pipeline's start to the
output in place: workers starting, the ensemble loading once per worker,
decoding, inference, Parquet; Ray's own start is given apart). With --beam,
Apache Beam's RunInference on the DirectRunner, the ensemble as a custom
ModelHandler, with 1 worker (in_memory) and 2 (multi_processing), writing
Parquet too. Timings on a shared machine are noisy: compare rows of one run.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_cnn_progression.inference.ensemble import Ensemble, bundle_dir
from mnist_cnn_progression.inference.predict import predict_paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="a run directory (its bundle and test images)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--beam", action="store_true", help="add Apache Beam's rows (needs apache-beam)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch.json"))
    args = parser.parse_args(argv)
    models = bundle_dir(args.models)
    digits = np.load(models.parent / "data" / "test_images.npy")[:args.images]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        files = []
        for k, digit in enumerate(digits):
            files.append(str(scratch / "in" / f"{k:05d}.png"))
            Path(files[-1]).parent.mkdir(exist_ok=True)
            Image.fromarray(255 - digit).save(files[-1])
        started = time.perf_counter()
        loop = list(predict_paths(files, Ensemble.load(models)))
        rows.append(row("plain loop (one process, ONNX Runtime on all cores)", len(loop),
                        time.perf_counter() - started))
        rows += ray_rows(files, models, scratch)
        if args.beam:
            rows += beam_rows(files, models, scratch)
    for line in rows:
        line["ratio_to_loop"] = round(line["images_per_second"] / rows[0]["images_per_second"], 3)
    result = {"models": str(models), "images": len(files), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "note": "one run on a shared 2-core machine: compare ratios, not absolute rates", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def row(name: str, images: int, seconds: float, **extra) -> dict:
    return {"name": name, "images": images, "seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 1), **extra}


def ray_rows(files: list[str], models: Path, scratch: Path) -> list[dict]:
    from mnist_cnn_progression.inference.batch import classify_files, connect
    started = time.perf_counter()
    ray = connect(None)
    start_seconds = round(time.perf_counter() - started, 3)
    rows = []
    for workers in (1, 2):
        started = time.perf_counter()
        manifest = classify_files(files, models, scratch / f"ray{workers}", workers=workers)
        rows.append(row(f"Ray Data {ray.__version__}, {workers} worker(s)", manifest["images"],
                        time.perf_counter() - started, ray_start_seconds=start_seconds))
    ray.shutdown()
    return rows


def beam_rows(files: list[str], models: Path, scratch: Path) -> list[dict]:
    import apache_beam as beam
    import pyarrow.parquet as pq
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from mnist_cnn_progression.inference.batch import PREDICTIONS, decoded_file
    from mnist_cnn_progression.inference.predict import records

    class EnsembleHandler(ModelHandler):
        """The project's ensemble as a Beam model: loaded once per worker; an example is a file."""

        def load_model(self):
            return Ensemble.load(models, threads=1)

        def run_inference(self, batch, model, inference_args=None):
            for file in batch:
                yield PredictionResult(file, list(records(decoded_file(file), model, "vote")))

    rows = []
    for workers, mode in ((1, "in_memory"), (2, "multi_processing")):
        options = PipelineOptions(runner="DirectRunner", direct_num_workers=workers, direct_running_mode=mode)
        started = time.perf_counter()
        with beam.Pipeline(options=options) as pipeline:
            _ = (pipeline | beam.Create(files) | RunInference(EnsembleHandler())
                 | beam.FlatMap(lambda result: [{name: record.get(name) for name in PREDICTIONS.names}
                                                for record in result.inference])
                 | beam.io.WriteToParquet(str(scratch / f"beam{workers}" / "predictions"), PREDICTIONS))
        images = sum(pq.read_metadata(path).num_rows for path in (scratch / f"beam{workers}").iterdir())
        rows.append(row(f"Apache Beam {beam.__version__} DirectRunner {mode}, {workers} worker(s)", images,
                        time.perf_counter() - started))
    return rows


if __name__ == "__main__":
    main()
