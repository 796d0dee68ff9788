"""A base directory of released versions, as TF Serving lays them out, and the one rule of which version it serves.

    BASE/1/  a bundle (pushed by mnist-push, with its release.json) or a run directory (copied in by hand)
    BASE/2/  the next release; BASE/2/withdrawn.json once it is rolled back

The served version is the highest one that is complete (its bundle's
manifest.json is there: a push and the pipeline write it last) and not
withdrawn. The server (inference.serve.versions) and mnist-push
(inference.push) both ask `serving_order`, so what `mnist-push --list` calls
served is what a running server moves to. No MLServer, no TensorFlow here.
"""
import json
from pathlib import Path

import numpy as np

from mnist_cnn_progression.inference.ensemble import bundle_dir
from mnist_cnn_progression.inference.files import digest_arrays

RELEASE = "release.json"  # what mnist-push records of a version: its gate, figures and provenance
WITHDRAWN = "withdrawn.json"  # a rolled-back version: kept on disk, never served until restored


def numbered(base: Path) -> dict[int, Path]:
    """BASE's version directories by number; none when BASE is itself a bundle or a run directory."""
    base = Path(base)
    if complete(base) or not base.is_dir():
        return {}
    return {int(path.name): path for path in base.iterdir()
            if path.name.isascii() and path.name.isdigit() and path.is_dir()}


def complete(path: Path) -> bool:
    try:
        bundle_dir(path)
        return True
    except FileNotFoundError:
        return False


def withdrawn(version: Path) -> bool:
    return (Path(version) / WITHDRAWN).is_file()


def serving_order(base: Path) -> list[int]:
    """The versions that may be served, the preferred first: complete, not withdrawn, highest first."""
    versions = numbered(base)
    return [number for number in sorted(versions, reverse=True)
            if complete(versions[number]) and not withdrawn(versions[number])]


def served_version(base: Path) -> int | None:
    """The version a server of BASE answers with (when it passes its check), or None when there is none."""
    order = serving_order(base)
    return order[0] if order else None


def release_of(version: Path) -> dict | None:
    """A version's release.json, or None for one copied in by hand. Raises ValueError when it cannot be read."""
    path = Path(version) / RELEASE
    if not path.is_file():
        return None
    try:
        release = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read as JSON ({error}).") from None
    if not isinstance(release, dict):
        raise ValueError(f"{path} holds no release record.")
    return release


def test_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """The digest of a test set alone, as uint8 pixels [N, 28, 28] and labels: two bundles compare only on one set.

    The same digits give the same digest from a run's data/ or from IDX files.
    """
    return digest_arrays(images, labels.astype(np.uint8))
