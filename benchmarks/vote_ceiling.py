"""How far voting can take one recipe: pool the networks of several runs and vote.

    python -m benchmarks.vote_ceiling runs/fast0 runs/seed1 runs/seed2 --out benchmarks/results/vote_ceiling.json

Each run directory holds its voting stage's networks' test probabilities
(stages/<stage>/member_probabilities.npy) and the test labels (data/test_labels.npy).
Printed: each run's networks and vote, the vote of every choice of `size`
networks from the pool (mean, min and max over the choices), and the vote of
the whole pool. When even the whole pool's vote misses a figure, more networks
of the recipe will not reach it, only better ones: the digits most of the
networks get wrong stay wrong.
"""
import argparse
import itertools
import math
from pathlib import Path

import numpy as np

from mnist_cnn_progression.inference.files import write_json
from mnist_cnn_progression.inference.vote import vote

MAX_CHOICES = 20_000  # beyond this many, a seeded random sample of the choices


def vote_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((vote(probabilities)[0] == labels).mean())


def choices(pool: int, size: int, seed: int = 0):
    """Every choice of `size` of `pool` networks, or MAX_CHOICES of them drawn at random."""
    if math.comb(pool, size) <= MAX_CHOICES:
        return list(itertools.combinations(range(pool), size))
    rng = np.random.default_rng(seed)
    return [tuple(sorted(rng.choice(pool, size, replace=False))) for _ in range(MAX_CHOICES)]


def pool_runs(run_dirs: list[Path], stage: str, size: int) -> dict:
    labels = None
    runs, pooled = [], []
    for run_dir in run_dirs:
        probabilities = np.load(run_dir / "stages" / stage / "member_probabilities.npy")
        run_labels = np.load(run_dir / "data" / "test_labels.npy")
        if labels is not None and not np.array_equal(labels, run_labels):
            raise SystemExit(f"{run_dir} was tested on other digits than {run_dirs[0]}: pool runs of one test set.")
        labels = run_labels
        runs.append({"run": str(run_dir), "vote": vote_accuracy(probabilities, labels),
                     "networks": [float((p.argmax(-1) == labels).mean()) for p in probabilities]})
        pooled.append(probabilities)
    pool = np.concatenate(pooled)
    if size > len(pool):
        raise SystemExit(f"--size {size} is more than the {len(pool)} networks pooled.")
    votes = np.array([vote_accuracy(pool[list(chosen)], labels) for chosen in choices(len(pool), size)])
    wrong = (pool.argmax(-1) != labels).sum(axis=0)
    return {"stage": stage, "runs": runs, "pool": len(pool), "size": size,
            "vote_of_size": {"choices": len(votes), "mean": float(votes.mean()), "min": float(votes.min()),
                             "max": float(votes.max())},
            "vote_of_pool": vote_accuracy(pool, labels),
            "digits_most_networks_miss": int((wrong > len(pool) / 2).sum())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--stage", default="ensemble")
    parser.add_argument("--size", type=int, default=5, help="networks per vote (default 5)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = pool_runs(args.run_dirs, args.stage, args.size)
    for run in result["runs"]:
        print(f"{run['run']}: vote {run['vote']:.2%}, networks " + ", ".join(f"{a:.2%}" for a in run["networks"]))
    spread = result["vote_of_size"]
    print(f"votes of {args.size} of the {result['pool']} networks ({spread['choices']} choices): "
          f"mean {spread['mean']:.2%}, {spread['min']:.2%}-{spread['max']:.2%}")
    print(f"vote of all {result['pool']}: {result['vote_of_pool']:.2%}; "
          f"{result['digits_most_networks_miss']} test digits are missed by most of them")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
