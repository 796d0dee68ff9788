"""Pictures benchmark: how often the prediction command reads the pictures people send right, per kind.

    python -m benchmarks.pictures                          # the bundle in /work/runs/fast, 100 pictures per kind
    python -m benchmarks.pictures --models runs/fast --per-kind 25
    python -m benchmarks.pictures --polarity --digits 1000   # MNIST's own digits as PNG, white on black and inverted

The corpus is tests/picture_corpus.py: official MNIST test digits (the
t10k IDX files) rendered as eight kinds of picture, seeded. The pictures are
written to a temporary folder and classified by the prediction command's own
path (inference.predict.predict_paths: read, make MNIST-like, the ensemble);
a picture is right when its class is the digit's label. The same digits,
clean, give the ensemble's accuracy to compare with. The time per picture is
picture_from_bytes alone (decoding and the picture handling, no network), one
picture at a time on one process. Timings on a shared machine are noisy.

With --polarity the pictures are instead the first --digits test digits
saved as grey PNG files as they are (MNIST's own white on black) and
inverted (black on white), at 28, 112 and 280 pixels (enlarged bicubic):
each polarity should read as the clean digits do.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from mnist_cnn_progression.inference.ensemble import Ensemble
from mnist_cnn_progression.inference.pictures import InputError, picture_from_bytes
from mnist_cnn_progression.inference.predict import predict_paths

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from picture_corpus import Picture, corpus, official_test_digits  # noqa: E402

DEFAULT_MODELS = Path("/work/runs/fast")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS if DEFAULT_MODELS.exists() else None,
                        help="a bundle or a run directory (default: /work/runs/fast if present)")
    parser.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "datasets" / "mnist",
                        help="a folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--polarity", action="store_true",
                        help="MNIST's own digits as PNG in both polarities instead of the corpus")
    parser.add_argument("--digits", type=int, default=1000, help="with --polarity: how many test digits")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/pictures.json "
                                                  "(pictures_polarity.json with --polarity)")
    args = parser.parse_args(argv)
    args.out = args.out or Path(f"benchmarks/results/pictures{'_polarity' if args.polarity else ''}.json")
    if args.models is None:
        parser.error("--models is required when /work/runs/fast does not exist")

    digits, labels = official_test_digits(args.mnist)
    pictures = mnist_pngs(digits[:args.digits]) if args.polarity else corpus(digits, args.per_kind, args.seed)
    ensemble = Ensemble.load(args.models)
    with tempfile.TemporaryDirectory() as scratch:
        names = {}
        for number, picture in enumerate(pictures):
            path = Path(scratch) / f"{number:05d}.{picture.suffix}"
            path.write_bytes(picture.data)
            names[str(path)] = number
        classes = np.full(len(pictures), -1)
        for record in predict_paths([Path(scratch)], ensemble):
            classes[names[record["path"]]] = record.get("class", -1)
    seconds = np.array([timed(picture.data) for picture in pictures])
    sources = np.array([picture.source for picture in pictures])
    kinds = np.array([picture.kind for picture in pictures])
    right = classes == labels[sources]
    clean = ensemble.predict(digits[sources][..., None] / np.float32(255)).classes == labels[sources]
    rows = [row(kind, right[kinds == kind], clean[kinds == kind], seconds[kinds == kind])
            for kind in dict.fromkeys(kinds)]
    result = {"models": str(args.models), "digits": f"official MNIST test set ({args.mnist})",
              "per_kind": int(len(pictures) / len(rows)), "seed": args.seed, "cpus": os.cpu_count(),
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "rows": rows, "overall": row("overall", right, clean, seconds)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def mnist_pngs(digits: np.ndarray, sides=(28, 112, 280)) -> list[Picture]:
    """Each digit (uint8 [N, 28, 28]) as a grey PNG, white on black as MNIST has it and inverted, at each side."""
    pictures = []
    for white_on_black in (True, False):
        for side in sides:
            kind = f"{'white on black' if white_on_black else 'black on white'}, {side} px"
            for source, digit in enumerate(digits):
                pixels = digit if side == 28 else cv2.resize(digit, (side, side), interpolation=cv2.INTER_CUBIC)
                pixels = pixels if white_on_black else 255 - pixels
                pictures.append(Picture(kind, source, cv2.imencode(".png", pixels)[1].tobytes(), "png"))
    return pictures


def timed(data: bytes) -> float:
    """Seconds to make one picture MNIST-like (or to refuse it)."""
    start = time.perf_counter()
    try:
        picture_from_bytes(data)
    except InputError:
        pass
    return time.perf_counter() - start


def row(kind: str, right: np.ndarray, clean: np.ndarray, seconds: np.ndarray) -> dict:
    return {"kind": kind, "pictures": int(len(right)), "accuracy": round(float(right.mean()), 4),
            "clean_accuracy": round(float(clean.mean()), 4),
            "median_ms": round(float(np.median(seconds)) * 1e3, 1),
            "p90_ms": round(float(np.percentile(seconds, 90)) * 1e3, 1)}


def markdown(result: dict) -> str:
    lines = [f"Models: {result['models']}; {result['per_kind']} pictures per kind, seed {result['seed']}, "
             f"{result['digits']}.", "",
             "| kind | pictures | right | same digits clean | ms per picture (median / p90) |",
             "|---|---:|---:|---:|---:|"]
    for entry in [*result["rows"], result["overall"]]:
        lines.append(f"| {entry['kind']} | {entry['pictures']:,} | {entry['accuracy']:.1%} | "
                     f"{entry['clean_accuracy']:.1%} | {entry['median_ms']:.0f} / {entry['p90_ms']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
