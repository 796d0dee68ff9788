"""Side by side: the stages of two or more finished runs, from their summary.json files.

    python -m mnist_cnn_progression.pipeline.compare RUN_DIR RUN_DIR... [--json]

Runs are lettered A, B, ...; the difference columns are each run's test
accuracy minus run A's, in percentage points.
"""
import argparse
import json
import string
from pathlib import Path

from mnist_cnn_progression.pipeline.report import (cell, duration, load_summary, percent, points, stage_order,
                                                   to_markdown)
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID

FIELDS = ("test_accuracy", "val_accuracy", "best_epoch", "wall_seconds")


def compare(run_dirs: list) -> dict:
    """JSON-ready comparison: the runs, and per stage the reference and each run's figures (None: not run)."""
    summaries = [load_summary(run_dir) for run_dir in run_dirs]
    done = [{i: s for i, s in summary.get("stages", {}).items() if s.get("status") == "done"}
            for summary in summaries]
    stages = []
    for stage_id in stage_order(dict.fromkeys(i for stages in done for i in stages)):
        entries = [stages.get(stage_id) for stages in done]
        known = STAGE_BY_ID.get(stage_id)
        reference = next((e["reference_accuracy"] for e in entries if e and "reference_accuracy" in e),
                         known.reference if known else None)
        stages.append({"stage": stage_id, "reference_accuracy": reference,
                       "runs": [{key: e.get(key) for key in FIELDS} if e else None for e in entries]})
    runs = [{"run": str(run_dir), "preset": summary.get("preset"), "seed": summary.get("seed"),
             "sample": summary.get("data", {}).get("sample", False)}
            for run_dir, summary in zip(run_dirs, summaries)]
    return {"runs": runs, "stages": stages}


def to_table(comparison: dict) -> str:
    """A legend of the run letters, then one markdown row per stage."""
    letters = string.ascii_uppercase[:len(comparison["runs"])]
    legend = [f"- {letter}: {run['run']} (preset {run['preset']}, seed {run['seed']}"
              + (", sample data)" if run["sample"] else ")") for letter, run in zip(letters, comparison["runs"])]
    header = ["Stage", "Reference %", *(f"{x} test %" for x in letters),
              *(f"{x} − A (pp)" for x in letters[1:]),
              *(f"{x} best epoch" for x in letters), *(f"{x} wall time" for x in letters)]
    rows = []
    for stage in comparison["stages"]:
        runs = [run or dict.fromkeys(FIELDS) for run in stage["runs"]]
        first = runs[0]["test_accuracy"]
        rows.append([stage["stage"], percent(stage["reference_accuracy"]),
                     *(percent(run["test_accuracy"]) for run in runs),
                     *(points(run["test_accuracy"], first) for run in runs[1:]),
                     *(cell(run["best_epoch"]) for run in runs),
                     *(duration(run["wall_seconds"]) for run in runs)])
    return "\n".join(legend) + "\n\n" + to_markdown([("table", header, rows)])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mnist_cnn_progression.pipeline.compare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories with a summary.json")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON instead of markdown")
    args = parser.parse_args(argv)
    comparison = compare(args.runs)
    print(json.dumps(comparison, indent=2) if args.json else to_table(comparison).rstrip())


if __name__ == "__main__":
    main()
