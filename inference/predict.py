"""Classify digit images with the ONNX ensemble: `mnist-predict --models PATH FILE_OR_DIR...`.

PATH is a bundle or a run directory. Prints one JSON line per image,
{"path", "class", "votes", "probabilities", "confidence"}
(plus "warning" for a hard picture) or {"path", "error"}; a bad file
gets its own error line and the others still complete. Exit code 1 when any
input failed, 2 when the models cannot be loaded. Imports no TensorFlow.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from mnist_cnn_progression.inference.ensemble import MODES, Ensemble
from mnist_cnn_progression.inference.pictures import read_inputs

BATCH = 256


def predict_paths(paths: Iterable[Path], ensemble: Ensemble, *, mode: str = "vote") -> Iterator[dict]:
    """One record per image found under paths, in input order, predicted in batches of 256."""
    pending, images = [], 0
    for path in paths:
        for label, item in read_inputs(Path(path)):
            pending.append((label, item))
            images += isinstance(item, np.ndarray)
            if images == BATCH:
                yield from records(pending, ensemble, mode)
                pending, images = [], 0
    yield from records(pending, ensemble, mode)


def classify(paths: Iterable[Path], models: Path, *, mode: str = "vote", **options) -> list[dict]:
    """The Python API: load the ensemble from models (bundle or run dir) and classify every image under paths.

    options go to Ensemble.load (fused, int8, threads).
    """
    return list(predict_paths(paths, Ensemble.load(models, **options), mode=mode))


def records(pending: list, ensemble: Ensemble, mode: str) -> Iterator[dict]:
    images = [item for _, item in pending if isinstance(item, np.ndarray)]
    prediction = ensemble.predict(np.stack(images), mode=mode) if images else None
    confidence, warnings = (prediction.confidence, prediction.warnings) if images else ((), ())
    index = 0
    for label, item in pending:
        if not isinstance(item, np.ndarray):
            yield {"path": label, "error": str(item)}
            continue
        record = {"path": label, "class": int(prediction.classes[index]),
                  "votes": prediction.votes[index].tolist(),
                  "probabilities": [round(float(p), 6) for p in prediction.probabilities[index]],
                  "confidence": round(float(confidence[index]), 6)}
        if warnings[index]:
            record["warning"] = warnings[index]
        yield record
        index += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, type=Path, help="a bundle directory or a run directory")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE_OR_DIR",
                        help="PNG/JPEG images, .npy arrays, IDX files (raw or .gz), or directories of them")
    parser.add_argument("--mode", choices=MODES, default="vote",
                        help="vote: majority, a tie to the highest mean probability (default); mean: highest mean")
    parser.add_argument("--separate", action="store_true",
                        help="run the member sessions one by one, not the fused graph")
    parser.add_argument("--int8", action="store_true", help="use the statically quantised int8 networks")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all CPUs)")
    args = parser.parse_args(argv)
    try:
        ensemble = Ensemble.load(args.models, fused=not args.separate, int8=args.int8, threads=args.threads)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: cannot load the models from {args.models}: {error}", file=sys.stderr)
        return 2
    if ensemble.training_data_warning:
        print(f"warning: {ensemble.training_data_warning}", file=sys.stderr)
    failed = False
    for record in predict_paths(args.inputs, ensemble, mode=args.mode):
        failed |= "error" in record
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
