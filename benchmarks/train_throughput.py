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

Named in --stages, the ensemble stage compares ways to train its five
networks, at the fast preset's batch and optimizer only: one network alone
(own step; chained members, `chain_epochs`, can only train so), two in two
threads (what the pipeline does with independent members), and all five as one
Keras model, their first convolutions fused into one (`fused_members`), also
with their second convolutions as one grouped convolution. Images per second
count every network's images (two networks at once count each image twice);
each method is also given as its ratio to own step. The methods of a stage
take turns, one timed run each per round, so drift on the machine hits them
all alike. The grouped convolution runs through XLA on CPU and takes most of
such a run's time (the command below: about 4 minutes on 2 idle cores).

Mixed precision (the setting `precision`): own step is also timed under each
mixed policy named in --precisions (default: the one `auto` picks here, if
any), as its own method, so its ratio to own step is its speed-up over
float32. The output names the CPU's bfloat16 flags and what `auto` picks.

The PyTorch eager peer (benchmarks.torch_peer), when torch is installed in
the same environment (it is no dependency of the project: `pip install
torch`): each stage's network built in torch.nn from the same spec, trained by
a plain eager loop at the same batch with the same optimizer, as one more
method ("PyTorch eager"), also under bfloat16 autocast when mixed_bfloat16 is
timed. Without torch the output says it skipped the peer; --no-torch leaves
it out.

    python -m benchmarks.train_throughput [--stages conv2_relu] [--images 20000] [--out FILE]
    python -m benchmarks.train_throughput --stages ensemble --images 3200 --repeats 4 --out FILE
    python -m benchmarks.train_throughput --compare "" --precisions mixed_bfloat16,mixed_float16 --out FILE
"""
import argparse
import json
import platform
import statistics
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from benchmarks.flops import matmul_flops, timed
from mnist_cnn_progression.models.layers import ConvPool
from mnist_cnn_progression.models.networks import build_network
from mnist_cnn_progression.models.specs import IMAGE_SHAPE
from mnist_cnn_progression.pipeline import config, inputs, precision, strategy as strategies
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID, STAGES
from mnist_cnn_progression.pipeline.modelstage import run_concurrently
from mnist_cnn_progression.pipeline.train import TrainSettings, make_optimizer, make_train_steps

DEFAULT_STAGES = [s.id for s in STAGES if not s.optional and s.members == 1]


def random_digits(images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (images, 28, 28), dtype=np.uint8), rng.integers(0, 10, images, dtype=np.uint8)


class GroupedConvPool(ConvPool):
    """ConvPool with its filters in `groups` blocks, block g reading only block g of the input channels.

    Keras's ops.conv takes the groups from the kernel's shape and, on CPU, runs
    a grouped convolution through XLA (TensorFlow's CPU kernel has no groups).
    """

    def __init__(self, *args, groups: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.groups = groups

    def build(self, input_shape):
        super().build((*input_shape[:-1], input_shape[-1] // self.groups))


def fused_members(members: list, grouped_conv2: bool = False) -> keras.Model:
    """Convolutional networks as one model: images -> probabilities [N, members, 10].

    Their first convolutions become one ConvPool holding every member's
    filters (one pass over the images instead of one per member); with
    grouped_conv2 their second convolutions too, as one grouped convolution.
    The fused layers start from the members' weights side by side; after them
    each member's own remaining layers (the same layer objects, so the same
    weights and dropout seeds) read its own block of channels. The model
    computes what the members compute, which the tests check.
    """
    x = images = keras.Input(IMAGE_SHAPE, name="images")
    fused = 2 if grouped_conv2 else 1
    for depth in range(fused):
        convs = [member.layers[depth] for member in members]
        conv = GroupedConvPool.from_config({
            **convs[0].get_config(), "name": f"fused_conv{depth + 1}", "filters": convs[0].filters * len(members),
            "groups": len(members) if depth else 1})  # the first convolution's input, the image, is every member's
        x = conv(x)
        conv.set_weights([np.concatenate(parts, axis=-1) for parts in zip(*(c.get_weights() for c in convs))])
    outputs = [keras.Sequential(member.layers[fused:], name=f"member{number}")(channels)  # names unique in the model
               for number, (member, channels) in enumerate(zip(members, keras.ops.split(x, len(members), axis=-1)))]
    return keras.Model(images, keras.ops.stack(outputs, axis=1), name="fused_members")


def l2_coefficient(stage) -> float:
    """The Keras L2 coefficient every method trains with: some L2 work where the stage's recipe has L2 at all."""
    return 1e-5 if stage.lmbda else 0.0


def training_pass(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int,
                  seed: int = 0, members: int = 1, grouped_conv2: bool = False, policy: str = "float32"):
    """A function that trains on `images` images with the pipeline's own step, under `policy`, warmed up.

    members > 1: that many of the stage's networks as one model
    (fused_members), every image's label given to each; the step's mean loss
    over the batch is then the members' losses summed, and one Adam (its
    updates are per weight) trains each member as it would train alone.
    """
    strategy = strategies.choose("auto")
    steps = images // batch_size
    data = inputs.Arrays(*random_digits(steps * batch_size, seed))
    settings = TrainSettings(epochs=repeats + 1, batch_size=batch_size, optimizer=optimizer, learning_rate=0.01,
                             precision=policy)
    with strategy.scope():
        networks = [build_network(stage.network, l2=l2_coefficient(stage), seed=seed + member,
                                  precision=policy) for member in range(members)]
        model = fused_members(networks, grouped_conv2) if members > 1 else networks[0]
        train_steps = make_train_steps(model, make_optimizer(settings, steps), strategy, batch_size)

    def dataset(ctx):
        batches = data.training(ctx.get_per_replica_batch_size(batch_size), 1, repeats + 1, shuffle=True,
                                seed=seed, input_context=ctx)
        return batches.map(lambda x, y: (x, tf.tile(y[:, None], [1, members]))) if members > 1 else batches

    batches = iter(strategy.distribute_datasets_from_function(dataset))

    def one_epoch():
        for done in range(0, steps, steps_per_call):
            train_steps(batches, tf.constant(min(steps_per_call, steps - done)))

    one_epoch()  # warm-up: tracing and tf.data start-up
    return one_epoch


def own_step(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int,
             policy: str = "float32"):
    """The pipeline's own step on one network (under a mixed precision policy, when given one)."""
    return training_pass(stage, batch_size, optimizer, images, repeats, steps_per_call, policy=policy), 1


def keras_fit(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int):
    """Keras's own Model.fit with steps_per_execution, on the same network and optimizer."""
    x, y = random_digits(images // batch_size * batch_size)
    x = x[..., None].astype(np.float32) / 255
    model = build_network(stage.network, l2=l2_coefficient(stage))
    settings = TrainSettings(epochs=1, batch_size=batch_size, optimizer=optimizer, learning_rate=0.01)
    model.compile(make_optimizer(settings, len(x) // batch_size), "sparse_categorical_crossentropy",
                  steps_per_execution=steps_per_call)
    fit = lambda: model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
    fit()  # warm-up
    return fit, 1


def side_by_side(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int):
    """Two networks trained at once in two threads, as the ensemble stage trains its members."""
    passes = [training_pass(stage, batch_size, optimizer, images, repeats, steps_per_call, seed) for seed in (0, 1)]
    return (lambda: run_concurrently(passes, workers=2)), 2


def as_one_model(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int,
                 grouped_conv2: bool = False):
    """All the stage's networks as one model with one optimizer (fused_members)."""
    return training_pass(stage, batch_size, optimizer, images, repeats, steps_per_call, members=stage.members,
                         grouped_conv2=grouped_conv2), stage.members


def torch_eager(stage, batch_size: int, optimizer: str, images: int, repeats: int, steps_per_call: int,
                autocast: bool = False):
    """PyTorch's eager loop on the same network, batch and optimizer (in bfloat16 autocast when asked)."""
    from benchmarks import torch_peer
    digits = random_digits(images // batch_size * batch_size)
    return torch_peer.training_pass(stage.network, *digits, batch_size, optimizer, learning_rate=0.01,
                                    l2=l2_coefficient(stage), autocast=autocast), 1


def torch_installed() -> str | None:
    """torch's version and threads if the PyTorch peer can run here, else None (torch is optional)."""
    try:
        from benchmarks import torch_peer
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        return None
    return torch_peer.describe()


def methods(stage, compared: set, mixed: list, with_torch: bool = False) -> dict:
    """The methods timed for a stage, by name; each prepares (a function training on `images` images, the
    number of networks it trains)."""
    chosen = {"own step": own_step} | {f"own step, {policy}": partial(own_step, policy=policy) for policy in mixed}
    if with_torch:
        chosen |= {"PyTorch eager": torch_eager} | (
            {"PyTorch eager, bf16 autocast": partial(torch_eager, autocast=True)} if "mixed_bfloat16" in mixed else {})
    if stage.id in compared:
        chosen |= {"Keras fit": keras_fit, "two nets side by side": side_by_side}
    if stage.members > 1:
        chosen |= {"two nets side by side": side_by_side, f"{stage.members} nets as one model": as_one_model,
                   f"{stage.members} nets as one model, grouped conv2": partial(as_one_model, grouped_conv2=True)}
    return chosen


def take_turns(prepared: dict, images: int, repeats: int) -> dict:
    """Images per second (every network's counted) of each prepared method, `repeats` times.

    One timed run of each method per round, each round starting one method
    later, so drift on the machine (other load, clock speed) hits all alike.
    """
    names = list(prepared)
    rates = {name: [] for name in names}
    for round_ in range(repeats):
        start = round_ % len(names)
        for name in names[start:] + names[:start]:
            action, networks = prepared[name]
            rates[name].append(networks * images / timed(action))
    return rates


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help="stages to time (default: every non-optional single-network stage; add ensemble to "
                             "compare ways of training its five networks)")
    parser.add_argument("--images", type=int, default=20_000, help="images per timed run (default 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    parser.add_argument("--compare", default="conv2_relu",
                        help="stages also timed with Keras's Model.fit and as two networks trained side by side "
                             "(default: conv2_relu, the network of the 4,000 img/s target)")
    parser.add_argument("--precisions", default=None,
                        help="mixed precision policies to time own step under besides float32, comma-separated "
                             "(default: what precision=auto picks on this machine, if it is not float32)")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave out the PyTorch eager peer, timed by default when torch is installed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args(argv)
    machine = precision.this_machine()
    auto = precision.resolve("auto", machine)
    mixed = ([p for p in args.precisions.split(",") if p] if args.precisions is not None
             else [auto.policy] if auto.policy != "float32" else [])
    unknown = [p for p in mixed if p not in precision.POLICIES[1:]]
    if unknown:
        parser.error(f"--precisions: {', '.join(unknown)}: choose from {', '.join(precision.POLICIES[1:])}")
    bf16_flags = machine.bf16_flags()
    print(f"CPU bfloat16 flags: {', '.join(bf16_flags) or 'none'}; precision=auto picks {auto.describe()}; "
          f"timing float32{''.join(', ' + p for p in mixed)}", flush=True)
    torch_version = None if args.no_torch else torch_installed()
    if torch_version is None and not args.no_torch:
        print("PyTorch eager peer skipped: torch is not installed (pip install torch to time it)", flush=True)
    fast = config.PRESETS["fast"]
    seed = config.PRESETS["seed"]
    peak = matmul_flops()
    rows = []
    compared = set(args.compare.split(",")) if args.compare else set()
    for stage_id in args.stages.split(","):
        stage = STAGE_BY_ID[stage_id]
        macs = stage.network.multiply_accumulates()
        limit = peak / (3 * 2 * macs)
        for preset in (fast,) if stage.members > 1 else (seed, fast):
            batch, optimizer, steps_per_call = (config.for_stage(preset, key, stage_id)
                                                for key in ("batch_size", "optimizer", "steps_per_call"))
            prepared = {name: prepare(stage, batch, optimizer, args.images, args.repeats, steps_per_call)
                        for name, prepare in methods(stage, compared, mixed, torch_version is not None).items()}
            rates = take_turns(prepared, args.images // batch * batch, args.repeats)
            for method, method_rates in rates.items():
                median = statistics.median(method_rates)
                ratios = [rate / own for rate, own in zip(method_rates, rates["own step"])]
                rows.append({"stage": stage_id, "network": stage.network.describe(), "method": method,
                             "networks": prepared[method][1], "batch": batch, "optimizer": optimizer,
                             "steps_per_call": steps_per_call, "images_per_second_median": round(median),
                             "images_per_second_all": [round(r) for r in method_rates],
                             "ratio_to_own_step_median": round(statistics.median(ratios), 3),
                             "ratio_to_own_step_all": [round(r, 3) for r in ratios], "macs_per_image": macs,
                             "achieved_gflops": round(median * 6 * macs / 1e9, 2),
                             "flop_limit_images_per_second": round(limit),
                             "fraction_of_peak": round(median / limit, 4)})
                print(f"{stage_id:12s} {method:36s} batch {batch:4d} {optimizer:5s} {median:9.0f} img/s  "
                      f"x{rows[-1]['ratio_to_own_step_median']:.2f}  {rows[-1]['achieved_gflops']:6.2f} GFLOP/s  "
                      f"({median / limit:.1%} of the matmul peak)", flush=True)
    result = {"machine": f"{platform.machine()}, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} "
                         f"intra-op threads", "tensorflow": tf.__version__, "torch": torch_version,
              "cpu_bfloat16_flags": bf16_flags, "gpu_compute_capabilities": [list(c) for c in machine.gpu_capabilities],
              "auto_precision": auto.as_entry(), "mixed_precisions": mixed,
              "numpy_matmul_gflops": round(peak / 1e9, 1), "images_per_run": args.images,
              "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    def ratio(row):
        if row["method"] == "own step":
            return "1.00"
        low, high = min(row["ratio_to_own_step_all"]), max(row["ratio_to_own_step_all"])
        return f"{row['ratio_to_own_step_median']:.2f} ({low:.2f}-{high:.2f})"

    lines = [f"NumPy matmul peak {result['numpy_matmul_gflops']} GFLOP/s; CPU bfloat16 flags: "
             f"{', '.join(result['cpu_bfloat16_flags']) or 'none'}; median of {result['repeats']} runs of "
             f"{result['images_per_run']:,} images, the methods taking turns. img/s counts every network's images; "
             f"x own step: the median (range) of the rounds' ratios to one network alone in float32.", "",
             "| stage | method | batch | optimizer | img/s (median) | x own step | GFLOP/s | FLOP limit (img/s) "
             "| of peak |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['method']} | {r['batch']} | {r['optimizer']} | {r['images_per_second_median']:,} | "
              f"{ratio(r)} | {r['achieved_gflops']} | {r['flop_limit_images_per_second']:,} | "
              f"{r['fraction_of_peak']:.1%} |" for r in result["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
