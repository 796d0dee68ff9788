"""How much ink MNIST's digits hold: the figures behind inference.ensemble.MIN_INK.

    python -m benchmarks.ink ../shared/datasets/mnist --out benchmarks/results/ink.json

Reads the two image files of an IDX directory (train and test, gzip or raw) through the one IDX
reader and prints the least, a low percentile and the median ink (image_ink: the sum of an image's
pixels in [0, 1]) over all the digits, against the threshold under which an image is called blank.
"""
import argparse
from pathlib import Path

import numpy as np

from mnist_cnn_progression.inference.ensemble import MIN_INK, image_ink
from mnist_cnn_progression.inference.files import write_json
from mnist_cnn_progression.pipeline.idx import read_idx

IMAGE_FILES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")


def images_of(directory: Path) -> np.ndarray:
    """Every image of the directory's train and test files, float32 [N, 28, 28] in [0, 1]."""
    paths = [directory / f"{name}.gz" if (directory / f"{name}.gz").exists() else directory / name
             for name in IMAGE_FILES]
    return np.concatenate([read_idx(path, expected_ndim=3) for path in paths]).astype(np.float32) / 255.0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mnist", type=Path, help="a directory of MNIST's IDX files")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ink.json"))
    args = parser.parse_args(argv)
    ink = image_ink(images_of(args.mnist))
    result = {"digits": len(ink), "min": round(float(ink.min()), 1),
              "percentile_0.1": round(float(np.percentile(ink, 0.1)), 1),
              "median": round(float(np.median(ink)), 1), "min_ink": MIN_INK,
              "below_min_ink": int((ink < MIN_INK).sum())}
    write_json(args.out, result)
    print(f"{result['digits']:,} digits: ink min {result['min']}, 0.1th percentile {result['percentile_0.1']}, "
          f"median {result['median']}; MIN_INK {MIN_INK} (digits below it: {result['below_min_ink']})")
    return result


if __name__ == "__main__":
    main()
