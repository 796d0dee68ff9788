"""Training throughput of every stage's network, against the FLOP/s this machine can do.

For each network: images per second of the pipeline's own training step
(tf.data input, `strategy.run`, `steps_per_call` steps per tf.function call)
at batch 10 with SGD (the seed preset) and at the fast preset's batch with
Adam, the median of several timed runs after a warm-up. A training step
costs about 3x the forward pass (forward, gradient to inputs, gradient to
weights), 2 FLOP per multiply-accumulate; the limit is that divided into
NumPy's measured matmul peak. For the --compare stages two more rows:
Keras's own `Model.fit` with `steps_per_execution` (is our loop as fast as
Keras's best?) and two networks trained at once in two threads, as the
ensemble stage does (what a second network gets from idle cores).

    python -m benchmarks.train_throughput [--stages conv2_relu] [--images 20000] [--out FILE]
"""
import argparse
import json
import platform
import statistics
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks.flops import count_macs, matmul_flops, timed
from models.networks import build_network
from pipeline import config, inputs, strategy as strategies
from pipeline.stages import STAGE_BY_ID, STAGES
from pipeline.modelstage import run_concurrently
from pipeline.train import TrainSettings, make_optimizer, make_train_steps

DEFAULT_STAGES = [s.id for s in STAGES if not s.optional and s.members == 1]


def random_digits(images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (images, 28, 28), dtype=np.uint8), rng.integers(0, 10, images, dtype=np.uint8)


def training_pass(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int,
                  seed: int = 0):
    """(a function that trains on `images` images, the model): the pipeline's own step, warmed up."""
    strategy = strategies.choose("auto")
    steps = images // batch_size
    data = inputs.Arrays(*random_digits(steps * batch_size, seed))
    settings = TrainSettings(epochs=repeats + 1, batch_size=batch_size, optimizer=optimizer, learning_rate=0.01)
    with strategy.scope():
        model = build_network(stage.network, l2=1e-5 if stage.lmbda else 0.0, seed=seed)
        train_steps = make_train_steps(model, make_optimizer(settings, steps), strategy, batch_size)
    batches = iter(strategy.distribute_datasets_from_function(lambda ctx: data.training(
        ctx.get_per_replica_batch_size(batch_size), 1, repeats + 1, shuffle=True, seed=seed, input_context=ctx)))

    def one_epoch():
        for done in range(0, steps, steps_per_call):
            train_steps(batches, tf.constant(min(steps_per_call, steps - done)))

    one_epoch()  # warm-up: tracing and tf.data start-up
    return one_epoch, model


def throughput(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int):
    """Images per second of `repeats` timed passes of `images` images each, and the network's MACs per image."""
    one_epoch, model = training_pass(stage, batch_size, optimizer, images, repeats, steps_per_call)
    images = images // batch_size * batch_size
    return [images / timed(one_epoch) for _ in range(repeats)], count_macs(model)


def side_by_side(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int) -> list:
    """Images per second of two networks trained at once, as the ensemble stage trains its members."""
    passes = [training_pass(stage, batch_size, optimizer, images, repeats, steps_per_call, seed)[0]
              for seed in (0, 1)]
    images = images // batch_size * batch_size
    return [2 * images / timed(lambda: run_concurrently(passes, workers=2)) for _ in range(repeats)]


def keras_fit(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int) -> list:
    """Images per second of Keras's own Model.fit with steps_per_execution, on the same network and optimizer."""
    x, y = random_digits(images // batch_size * batch_size)
    x = x[..., None].astype(np.float32) / 255
    model = build_network(stage.network, l2=1e-5 if stage.lmbda else 0.0)
    settings = TrainSettings(epochs=1, batch_size=batch_size, optimizer=optimizer, learning_rate=0.01)
    model.compile(make_optimizer(settings, len(x) // batch_size), "sparse_categorical_crossentropy",
                  steps_per_execution=steps_per_call)
    fit = lambda: model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
    fit()  # warm-up
    return [len(x) / timed(fit) for _ in range(repeats)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES))
    parser.add_argument("--images", type=int, default=20_000, help="images per timed run (default 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    parser.add_argument("--compare", default="conv2_relu",
                        help="stages also timed with Keras's Model.fit and as two networks trained side by side "
                             "(default: conv2_relu, the network of the 4,000 img/s target)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args(argv)
    fast = config.PRESETS["fast"]
    seed = config.PRESETS["seed"]
    peak = matmul_flops()
    rows = []
    compared = set(args.compare.split(",")) if args.compare else set()
    for stage_id in args.stages.split(","):
        stage = STAGE_BY_ID[stage_id]
        for batch, optimizer, steps_per_call in ((seed["batch_size"], seed["optimizer"], seed["steps_per_call"]),
                                                 (fast["batch_size"], fast["optimizer"], fast["steps_per_call"])):
            rates, macs = throughput(stage, batch, optimizer, args.images, args.repeats, steps_per_call)
            methods = {"own step": rates}
            if stage_id in compared:
                for name, measure in (("Keras fit", keras_fit), ("two nets side by side", side_by_side)):
                    methods[name] = measure(stage, batch, optimizer, args.images, args.repeats, steps_per_call)
            limit = peak / (3 * 2 * macs)
            for method, rates in methods.items():
                median = statistics.median(rates)
                rows.append({"stage": stage_id, "network": stage.network.describe(), "method": method,
                             "batch": batch, "optimizer": optimizer, "steps_per_call": steps_per_call,
                             "images_per_second_median": round(median),
                             "images_per_second_all": [round(r) for r in rates], "macs_per_image": macs,
                             "achieved_gflops": round(median * 6 * macs / 1e9, 2),
                             "flop_limit_images_per_second": round(limit),
                             "fraction_of_peak": round(median / limit, 4)})
                print(f"{stage_id:12s} {method:22s} batch {batch:4d} {optimizer:5s} {median:9.0f} img/s  "
                      f"{rows[-1]['achieved_gflops']:6.2f} GFLOP/s  ({median / limit:.1%} of the matmul peak)",
                      flush=True)
    result = {"machine": f"{platform.machine()}, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} "
                         f"intra-op threads", "tensorflow": tf.__version__,
              "numpy_matmul_gflops": round(peak / 1e9, 1), "images_per_run": args.images,
              "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [f"NumPy matmul peak {result['numpy_matmul_gflops']} GFLOP/s; median of {result['repeats']} runs of "
             f"{result['images_per_run']:,} images.", "",
             "| stage | method | batch | optimizer | img/s (median) | GFLOP/s | FLOP limit (img/s) | of peak |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['method']} | {r['batch']} | {r['optimizer']} | {r['images_per_second_median']:,} | "
              f"{r['achieved_gflops']} | {r['flop_limit_images_per_second']:,} | {r['fraction_of_peak']:.1%} |"
              for r in result["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
