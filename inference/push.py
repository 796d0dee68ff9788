"""Push a finished run's ensemble to a served base directory through a gate: `mnist-push RUN_DIR|BUNDLE --to BASE`.

    mnist-push RUN_DIR|BUNDLE --to BASE [--test-data DIR] [--min-accuracy PCT] [--tolerance PP] [--force]
    mnist-push --list BASE
    mnist-push --rollback BASE          (withdraw the served version; a running server falls back to the one before)
    mnist-push --restore N BASE         (undo a withdrawal)

The gate, as TFX's Evaluator blesses a model and its Pusher writes only a
blessed one: the candidate and the version BASE serves now are both scored
again with ONNX Runtime on the same test images (never taken on trust from
summary.json, so a bundle whose files changed is caught), and the candidate
is blessed when it scores at least --min-accuracy and no more than
--tolerance under the served version. A blessed candidate becomes BASE/N+1:
its ensemble files and a release.json (figures, provenance, the gate's
verdict) are written under a hidden name, the manifest last, and renamed into
place, so a server never sees half a version and a killed push leaves BASE as
it was (the next push removes what it left). Exit status: 0 pushed, 3 refused
by the gate (nothing written), 2 for bad input. Imports no TensorFlow.
"""
import argparse
import contextlib
import datetime
import fcntl
import getpass
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from mnist_cnn_progression.inference.contract import ENSEMBLE_REFERENCE_ACCURACY, IMAGE_SHAPE, NUM_CLASSES
from mnist_cnn_progression.inference.ensemble import Ensemble, bundle_dir
from mnist_cnn_progression.inference.files import UNFINISHED, check_files, copy_file, staged_directory, write_json
from mnist_cnn_progression.inference.idx import read_mnist_idx
from mnist_cnn_progression.inference.releases import (RELEASE, WITHDRAWN, complete, numbered, release_of,
                                                       served_version, serving_order, test_digest, withdrawn)
from mnist_cnn_progression.inference.run_layout import RunLayout, split_file
from mnist_cnn_progression.inference.serve.catalogue import training_data

# SEED.md's ensemble reference (33 of 10,000 test digits wrong), in percent: what a release must score by default.
DEFAULT_MIN_ACCURACY = round(ENSEMBLE_REFERENCE_ACCURACY * 100, 2)
# How far under the served version a candidate may score, in percentage points: about one test digit in
# 2,000, under the +-0.1 pp that SEED.md expects between seeds, so a retrain of the same recipe passes and a
# real regression does not.
DEFAULT_TOLERANCE = 0.05
LOCK = ".push.lock"
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
REFUSED, BAD_INPUT = 3, 2


class Refused(Exception):
    """The gate's verdict against a candidate, as one sentence."""


@contextlib.contextmanager
def locked(base: Path):
    """One push, rollback or restore at a time in BASE; a killed holder's lock goes with its process.

    What a killed push left (its hidden directory) is removed here, under the lock, so never while one writes.
    """
    base.mkdir(parents=True, exist_ok=True)
    with open(base / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for leftover in base.glob(f"{UNFINISHED}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        yield


def load_test_set(bundle: Path, test_data: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and labels: the IDX files in test_data, else the test split of the bundle's run."""
    if test_data is not None:
        images, labels = (read_mnist_idx(find_idx(test_data, name), ndim) for name, ndim in zip(TEST_FILES, (3, 1)))
        if images.shape[1:] != IMAGE_SHAPE[:2] or len(images) != len(labels):
            raise ValueError(f"--test-data {test_data} holds {len(images)} images of {images.shape[1:]} pixels and "
                             f"{len(labels)} labels: MNIST's test set is as many 28x28 images as labels.")
        return images, labels
    data = RunLayout.of_bundle(bundle).data
    if not (data / split_file("test_images")).is_file():
        raise ValueError(f"{bundle} has no run directory with its test set beside it: name the test images with "
                         f"--test-data DIR ({TEST_FILES[0]}[.gz] and {TEST_FILES[1]}[.gz]).")
    return np.load(data / split_file("test_images")), np.load(data / split_file("test_labels"))


def find_idx(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"--test-data {directory} holds no {name} (or {name}.gz).")


def score(path: Path, images: np.ndarray, labels: np.ndarray, *, int8: bool = False, verify: bool = True) -> dict:
    """Accuracy, error count and per-class recall of a bundle on a test set (verify: its fused graph checked first)."""
    classes = Ensemble.load(path, int8=int8, verify=verify).predict(images).classes
    right = classes == labels
    recall = [round(float(right[labels == digit].mean()), 6) if (labels == digit).any() else None
              for digit in range(NUM_CLASSES)]
    return {"accuracy": float(right.mean()), "errors": int((~right).sum()), "recall": recall}


def verdict(accuracy: float, parent: int | None, parent_accuracy: float | None, test_images: int,
            min_accuracy: float, tolerance: float) -> str | None:
    """Why the gate refuses the candidate, as a sentence; None when it is blessed. Figures in percent."""
    served = (f"; version {parent}, served now, scores {parent_accuracy:.2%} on the same images"
              if parent is not None else "")
    if accuracy * 100 < min_accuracy:
        return (f"The candidate scores {accuracy:.2%} on {test_images:,} test images, under the floor of "
                f"{min_accuracy:.2f}% (--min-accuracy, by default the ensemble's reference{served}); a quick or "
                f"sample run needs a lower floor, such as --min-accuracy {np.floor(accuracy * 100) - 1:.0f}.")
    if parent_accuracy is not None and (parent_accuracy - accuracy) * 100 > tolerance:
        return (f"The candidate scores {accuracy:.2%} on {test_images:,} test images, more than {tolerance:.2f} "
                f"points (--tolerance) under version {parent}, served now, which scores {parent_accuracy:.2%} on "
                f"the same images; the floor is {min_accuracy:.2f}%.")
    return None


def provenance(bundle: Path, manifest: dict) -> dict:
    """What the candidate's run says of it: preset, seed, the commit that trained it, its recipe's fingerprint.

    Only kinds and digests: no host path (the run's location is not the release's business).
    """
    run = RunLayout.of_bundle(bundle)
    summary = json.loads(run.summary.read_text()) if run.summary.is_file() else {}
    run_manifest = json.loads(run.manifest.read_text()) if run.manifest.is_file() else {}
    stage = manifest.get("metadata", {}).get("stage")
    fingerprints = {stage: run_manifest[stage]["fingerprint"]} if run_manifest.get(stage, {}).get("fingerprint") else {}
    return {"preset": summary.get("preset"), "seed": summary.get("seed"), "stage": stage,
            "fingerprints": fingerprints,
            "commit": summary.get("environment", {}).get("git_commit") or "not recorded by its run"}


def check_base(base: Path, option: str = "--to") -> None:
    """BASE is a directory of versions, or nothing yet: ValueError with a sentence when it is a file or a bundle."""
    if base.exists() and (not base.is_dir() or complete(base)):
        raise ValueError(f"{option} {base} is not a base directory of versions (it is a file, a bundle or a run "
                         "directory); name the directory that holds 1/, 2/, ...")


def push(candidate: Path, base: Path, *, test_data: Path | None = None, min_accuracy: float = DEFAULT_MIN_ACCURACY,
         tolerance: float = DEFAULT_TOLERANCE, force: bool = False) -> dict:
    """Score, gate and write the candidate as BASE's next version; its release record.

    Raises Refused with the gate's sentence (nothing written), or ValueError,
    OSError or KeyError with a sentence for bad input.
    """
    bundle, base = bundle_dir(candidate), Path(base)
    check_base(base)
    manifest = json.loads((bundle / "manifest.json").read_text())
    check_files(bundle, manifest)  # every file the version will hold, not only the graphs scored
    images, labels = load_test_set(bundle, test_data)
    digest, floats = test_digest(images, labels), images.astype(np.float32) / 255
    figures = {kind: score(bundle, floats, labels, int8=kind == "int8", verify=False)
               for kind in ("float32", "int8")}
    with locked(base):
        parent = served_version(base)
        parent_accuracy, refusal = None, None
        if parent is not None:
            parent_dir = base / str(parent)
            parent_digest = (release_of(parent_dir) or {}).get("test_digest")
            if parent_digest and parent_digest != digest:
                refusal = (f"The candidate was scored on other test images than version {parent}, served now "
                           f"(test digest {digest[:12]} against {parent_digest[:12]}): compare them on the same "
                           "set with --test-data DIR.")
            else:
                parent_accuracy = score(parent_dir, floats, labels)["accuracy"]
        accuracy = figures["float32"]["accuracy"]
        refusal = refusal or verdict(accuracy, parent, parent_accuracy, len(labels), min_accuracy, tolerance)
        if refusal and not force:
            raise Refused(refusal)
        version = max(numbered(base), default=0) + 1
        release = {
            "version": version, "parent": parent,
            "pushed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "pushed_by": getpass.getuser(),
            "accuracy": {kind: result["accuracy"] for kind, result in figures.items()},
            "errors": {kind: result["errors"] for kind, result in figures.items()},
            "recall": figures["float32"]["recall"], "test_images": len(labels), "test_digest": digest,
            **training_data(manifest.get("metadata", {}).get("data")), **provenance(bundle, manifest),
            "gate": {"verdict": "forced" if refusal else "blessed", "min_accuracy": min_accuracy / 100,
                     "tolerance": tolerance / 100, "parent_accuracy": parent_accuracy,
                     "reason": refusal or "at or above the floor, and within the tolerance of the served version"},
        }
        write_version(bundle, manifest, release, base / str(version))
    return release


def write_version(bundle: Path, manifest: dict, release: dict, final: Path) -> None:
    """The ensemble's files, release.json, then manifest.json (what makes it complete), under a hidden name;
    then one rename. A rename onto an existing version fails rather than replacing it."""
    with staged_directory(final, replace=False) as staging:
        for name in manifest["files"]:
            copy_file(bundle / name, staging / name)
        write_json(staging / RELEASE, release)
        copy_file(bundle / "manifest.json", staging / "manifest.json")


def withdraw(base: Path) -> tuple[int, int]:
    """Withdraw the served version; (the withdrawn one, the one served now). Raises ValueError with a sentence."""
    with locked(base):
        order = serving_order(base)
        if not order:
            raise ValueError(f"{base} serves no version: there is nothing to roll back.")
        if len(order) == 1:
            raise ValueError(f"Version {order[0]} is the only version {base} can serve: withdrawing it would leave "
                             "nothing to serve; push another first.")
        write_json(base / str(order[0]) / WITHDRAWN, {
            "withdrawn_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "withdrawn_by": getpass.getuser(), "served_instead": order[1]})
    return order[0], order[1]


def restore(base: Path, version: int) -> int | None:
    """Undo a withdrawal; the version served now. Raises ValueError with a sentence."""
    with locked(base):
        directory = numbered(base).get(version)
        if directory is None:
            raise ValueError(f"{base} has no version {version}.")
        if not withdrawn(directory):
            raise ValueError(f"Version {version} in {base} is not withdrawn: there is nothing to restore.")
        (directory / WITHDRAWN).unlink()
        return served_version(base)


def table(base: Path) -> str:
    """Every version of BASE, one line each: what --list prints."""
    versions = numbered(base)
    if not versions:
        raise ValueError(f"{base} holds no numbered versions (1/, 2/, ...).")
    served = served_version(base)
    rows = [("version", "accuracy", "int8", "training data", "pushed (UTC)", "gate", "withdrawn", "served")]
    for number, directory in sorted(versions.items()):
        if not complete(directory):
            rows.append((str(number), "", "", "", "", "incomplete", "", ""))
            continue
        try:
            release = release_of(directory)
        except ValueError:
            release = {"gate": {"verdict": "unreadable release.json"}}
        if release is None:
            accuracy = json.loads((bundle_dir(directory) / "manifest.json").read_text())["test_accuracy"]
            release = {"accuracy": accuracy, "gate": {"verdict": "copied by hand"}}
        accuracy = release.get("accuracy", {})
        rows.append((str(number), percent(accuracy.get("float32")), percent(accuracy.get("int8")),
                     "sample" if release.get("sample") else short_kind(release.get("training_data", "")),
                     release.get("pushed_at", "")[:16].replace("T", " "), release["gate"]["verdict"],
                     "withdrawn" if withdrawn(directory) else "", "served" if number == served else ""))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def percent(value: float | None) -> str:
    return f"{value:.2%}" if value is not None else ""


def short_kind(description: str) -> str:
    return description.split(";")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-push", description=__doc__.split("\n\n")[0])
    parser.add_argument("candidate", nargs="?", type=Path, metavar="RUN_DIR|BUNDLE",
                        help="a run directory with its bundle/, or a bundle")
    parser.add_argument("--to", type=Path, metavar="BASE", help="the base directory of versions that is served")
    parser.add_argument("--test-data", type=Path, metavar="DIR",
                        help="a directory with t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] to score "
                             "on (default: the candidate run's own test set)")
    parser.add_argument("--min-accuracy", type=float, default=DEFAULT_MIN_ACCURACY, metavar="PCT",
                        help=f"the floor, in percent (default: {DEFAULT_MIN_ACCURACY}, the ensemble's reference)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="PP",
                        help="how far under the served version the candidate may score, in percentage points "
                             f"(default: {DEFAULT_TOLERANCE})")
    parser.add_argument("--force", action="store_true", help="push past the gate; release.json says it was forced")
    parser.add_argument("--list", type=Path, metavar="BASE", help="list BASE's versions")
    parser.add_argument("--rollback", type=Path, metavar="BASE",
                        help="withdraw the version BASE serves now; servers fall back to the one before")
    parser.add_argument("--restore", nargs=2, metavar=("N", "BASE"), help="undo the withdrawal of version N")
    args = parser.parse_args(argv)
    modes = [args.candidate is not None, args.list is not None, args.rollback is not None, args.restore is not None]
    if sum(modes) != 1:
        parser.error("give one of: RUN_DIR|BUNDLE --to BASE, --list BASE, --rollback BASE, --restore N BASE.")
    if args.candidate is not None and args.to is None:
        parser.error("name the base directory to push to with --to BASE.")
    try:
        if args.list:
            print(table(args.list))
        elif args.rollback:
            old, new = withdraw(args.rollback)
            print(f"Version {old} is withdrawn; version {new} is served now (a running server moves to it at its "
                  "next look, --poll-seconds).")
        elif args.restore:
            number, base = args.restore
            if not number.isdigit():
                parser.error(f"--restore takes a version number, then BASE, not {number!r}.")
            print(f"Version {number} is restored; version {restore(Path(base), int(number))} is served now.")
        else:
            release = push(args.candidate, args.to, test_data=args.test_data, min_accuracy=args.min_accuracy,
                           tolerance=args.tolerance, force=args.force)
            print(pushed_line(release, args.to))
    except Refused as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return REFUSED
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    return 0


def pushed_line(release: dict, base: Path) -> str:
    parent = release["parent"]
    against = (f" against version {parent}'s {release['gate']['parent_accuracy']:.2%}" if parent is not None
               else " (the first version)")
    forced = " FORCED past the gate: " + release["gate"]["reason"] if release["gate"]["verdict"] == "forced" else ""
    return (f"Version {release['version']} pushed to {base}: {release['accuracy']['float32']:.2%} on "
            f"{release['test_images']:,} test images{against}; {release['gate']['verdict']}.{forced}")


if __name__ == "__main__":
    sys.exit(main())
