"""A run's progression against SEED.md's reference, as one PNG (the README's picture is made this way).

    python -m mnist_cnn_progression.pipeline.plot RUN_DIR --out docs/progression.png

It reads only RUN_DIR/summary.json: each finished stage's test accuracy beside its reference_accuracy.
"""
import argparse
import io
import sys
from pathlib import Path

from matplotlib.figure import Figure

from mnist_cnn_progression.inference.files import write_bytes
from mnist_cnn_progression.inference.run_layout import RunLayout
from mnist_cnn_progression.pipeline.report import load_summary, stage_order

RUN_COLOUR, REFERENCE_COLOUR = "tab:blue", "0.45"


def progression(summary: dict) -> list:
    """(stage id, test %, reference %) of every finished stage with both figures, in the progression's order."""
    stages = summary.get("stages", {})
    rows = [(stage_id, stages[stage_id].get("test_accuracy"), stages[stage_id].get("reference_accuracy"))
            for stage_id in stage_order(stages) if stages[stage_id].get("status") == "done"]
    return [(stage_id, 100 * test, 100 * reference) for stage_id, test, reference in rows
            if test is not None and reference is not None]


def progression_figure(summary: dict, title: str) -> Figure:
    """Two lines over the stages: the run's test accuracy, labelled, and SEED.md's."""
    rows = progression(summary)
    if not rows:
        raise ValueError("the run has no finished stage with a test accuracy and a reference to plot")
    ids, tests, references = zip(*rows)
    fig = Figure(figsize=(8, 4.2))
    axes = fig.subplots()
    axes.plot(ids, references, "s--", color=REFERENCE_COLOUR, label="reference (SEED.md)")
    axes.plot(ids, tests, "o-", color=RUN_COLOUR, label=f"this run ({summary.get('preset', '?')} preset)")
    for x, (test, reference) in enumerate(zip(tests, references)):  # each figure on the side away from the other
        above = test >= reference
        label(axes, x, test, RUN_COLOUR, above)
        label(axes, x, reference, REFERENCE_COLOUR, not above)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="lower right", fontsize=9)
    axes.tick_params(axis="x", labelrotation=20, labelsize=9)
    low = min(tests + references)
    axes.set_ylim(low - 0.15 * (100 - low), 100)
    fig.tight_layout()
    return fig


def label(axes, x: int, value: float, colour: str, above: bool):
    axes.annotate(f"{value:.2f}", (x, value), textcoords="offset points", xytext=(0, 7 if above else -13),
                  ha="center", fontsize=8, color=colour)


def describe(summary: dict) -> str:
    """The title: preset and data in words (never a host path)."""
    data = summary.get("data", {})
    source = "the 5,000-digit sample" if data.get("sample") else "full MNIST"
    return f"Test accuracy by stage: {summary.get('preset', '?')} preset on {source}, seed {summary.get('seed', '?')}"


def write_plot(run_dir: Path, out: Path) -> list:
    """Write the PNG (whole or not at all) and return the plotted rows."""
    summary = load_summary(run_dir)
    fig = progression_figure(summary, describe(summary))
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    write_bytes(Path(out), png.getvalue())
    return progression(summary)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_cnn_progression.pipeline.plot",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory with summary.json")
    parser.add_argument("--out", type=Path, default=Path("progression.png"), help="the PNG to write")
    args = parser.parse_args(argv)
    if not RunLayout(args.run_dir).summary.is_file():
        print(f"error: {args.run_dir} has no summary.json; is it a run directory?", file=sys.stderr)
        return 2
    try:
        rows = write_plot(args.run_dir, args.out)
    except ValueError as problem:
        print(f"error: {args.run_dir}: {problem}.", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(rows)} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
