"""Run the MNIST CNN progression of SEED.md: download -> expand -> the model stages -> report.

Naming a step or stage runs whatever it needs that is not done yet; a rerun
skips what is done and unchanged, and resumes a stage that was interrupted.
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up notices out of the log

from mnist_cnn_progression.inference.push import DEFAULT_MIN_ACCURACY, REFUSED, Refused, check_base, push, pushed_line
from mnist_cnn_progression.inference.run_layout import RunLayout
from mnist_cnn_progression.pipeline import config, native_log, sources
from mnist_cnn_progression.pipeline.errors import PipelineError
from mnist_cnn_progression.pipeline.runner import DEFAULT_NODES, STEP_IDS, plan
from mnist_cnn_progression.pipeline.stages import STAGES

PUSH_NEEDS = ("ensemble", "report")


def parse_args(argv=None) -> argparse.Namespace:
    stage_ids = ", ".join(s.id + (" (optional)" if s.optional else "") for s in STAGES)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"steps: {', '.join(STEP_IDS)}\nstages: {stage_ids}\n\npresets:\n" + "\n".join(
            f"  {name}: {values}" for name, values in config.PRESETS.items()))
    parser.add_argument("--stages", default="all",
                        help="comma-separated steps and/or stage ids to run (default: all, i.e. every "
                             "step and every non-optional stage)")
    parser.add_argument("--data", default="auto",
                        help="where MNIST comes from: auto, tfds, sample, a directory of IDX files, or a mirror "
                             "URL (https:// or file://). auto = the run's prepared data, else $MNIST_MIRROR, "
                             "else the public mirror if it answers, else the bundled sample (default: auto)")
    parser.add_argument("--preset", default="fast", choices=list(config.PRESETS),
                        help="training preset: seed (the reference hyperparameters), fast (modern training, "
                             "same networks), quick (minutes, for smoke tests) (default: fast)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where artifacts, logs and summary.json go (default: runs/<preset>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value, typed like it; KEY.STAGE=VALUE for one stage "
                             "(e.g. --set epochs=3 --set epochs.conv1=5); repeatable")
    parser.add_argument("--force", action="store_true", help="redo the named steps and stages even if done")
    parser.add_argument("--push-to", type=Path, metavar="BASE",
                        help="after the report, push the run's ensemble to the served base directory BASE through "
                             "mnist-push's gate (runs the ensemble and report when needed; exit 3 when refused)")
    parser.add_argument("--push-min-accuracy", type=float, default=DEFAULT_MIN_ACCURACY, metavar="PCT",
                        help=f"the gate's floor in percent (default: mnist-push's, the ensemble's reference "
                             f"{DEFAULT_MIN_ACCURACY})")
    args = parser.parse_args(argv)
    args.run_dir = args.run_dir or Path("runs") / args.preset
    return args


def check_arguments(args: argparse.Namespace) -> tuple[list[str], dict]:
    """Every mistake in the arguments, found before TensorFlow loads and before the run directory exists."""
    requested = DEFAULT_NODES if args.stages == "all" else [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.push_to is not None:  # the push reads the ensemble's bundle, after the report
        requested = [*requested, *(node for node in PUSH_NEEDS if node not in requested)]
        try:
            check_base(args.push_to, "--push-to")  # now, not after hours of training
        except ValueError as error:
            raise PipelineError(str(error)) from None
    plan(requested)
    sources.check_spec(args.data)
    if args.run_dir.exists() and not args.run_dir.is_dir():
        raise PipelineError(f"--run-dir {args.run_dir}: a file is in the way; name a directory.")
    return requested, config.resolve(args.preset, args.overrides)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        requested, settings = check_arguments(args)
        from mnist_cnn_progression.pipeline.runner import Runner
        from mnist_cnn_progression.pipeline.strategy import cluster_size
        strategy = None
        if cluster_size() > 1:  # MultiWorkerMirroredStrategy must exist before any other TensorFlow work
            from mnist_cnn_progression.pipeline import strategy as strategies
            # Every worker gets the same --run-dir on shared storage: the chief writes the run; each other worker
            # locks workers/<task>/, checkpoints beside the chief, restores the chief's checkpoint and follows its
            # decisions (pipeline.runner, pipeline.train).
            strategy = strategies.choose("multi_worker")
        runner = Runner(args.run_dir, args.preset, settings, args.data, force=args.force,
                        log=lambda text: print(text, flush=True), strategy=strategy)
        summary = runner.run(requested)
        if args.push_to is not None and runner.task is None:  # the chief alone, once every worker is done
            print(push_run(args), flush=True)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Refused as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return REFUSED
    except KeyboardInterrupt:
        print("interrupted: a rerun with the same arguments resumes from the last finished epoch",
              file=sys.stderr)
        return 130
    warning = summary.get("data", {}).get("warning")  # said once at the top of a long log: said again at its end
    print(f"done in {time.perf_counter() - started:.0f}s; summary: {RunLayout(args.run_dir).summary}"
          + (f"; WARNING: {warning}" if warning else ""))
    return 0


def push_run(args: argparse.Namespace) -> str:
    """The run's ensemble through mnist-push's gate into --push-to; raises Refused, or PipelineError for bad input."""
    try:
        return pushed_line(push(args.run_dir, args.push_to, min_accuracy=args.push_min_accuracy), args.push_to)
    except (OSError, ValueError, KeyError) as error:
        raise PipelineError(f"cannot push to {args.push_to}: {error}") from None


def cli() -> int:
    """The command: main() with TensorFlow's native start-up notices kept out of the log (pipeline.native_log)."""
    native_log.drop_native_startup_notices()
    return main()

