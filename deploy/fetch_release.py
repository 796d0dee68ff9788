#!/usr/bin/env python3
"""Put a pushed release on the model volume: fetch its archive, check every file, then move it into place.

    mnist-fetch-release --url URL [--sha256 HEX] --into /models/VERSION

The Kubernetes manifest's init container (deploy/kubernetes.yaml); the image has it as
/usr/local/bin/mnist-fetch-release. The archive is a .tar.gz of one version directory
that mnist-push wrote (tar -czf release-3.tar.gz -C BASE 3: the ensemble's files, its
manifest.json and release.json), at an http(s) URL such as an object store's (public or
presigned) or a file:// one. It must match --sha256 when given, every file the bundle's
manifest.json lists its SHA-256, and its release.json must name the version it goes to:
only then is the directory renamed into place, so a cluster serves what mnist-push let
through and never a half-written, damaged or hand-made copy. A release already in place
that checks out is kept: the pods after the first start without a download. Bad input
exits with status 2 and one sentence, leaving nothing behind.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from mnist_cnn_progression.inference.files import check_files
from mnist_cnn_progression.inference.releases import release_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-fetch-release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the release's .tar.gz: http://, https:// or file://")
    parser.add_argument("--sha256", default="", metavar="HEX", help="the archive's SHA-256 (empty: not checked)")
    parser.add_argument("--into", required=True, type=Path, metavar="DIR", help="where the release goes: BASE/VERSION")
    args = parser.parse_args(argv)
    try:
        print(place(args.url, args.sha256.strip().lower(), args.into))
    except (OSError, ValueError, KeyError) as error:
        print(f"error: cannot put the release of {args.url} into {args.into}: {error}", file=sys.stderr)
        return 2
    return 0


def place(url: str, archive_sha256: str, target: Path) -> str:
    """Fetch, unpack and check the release beside `target` (the same file system), then rename it into place."""
    if intact(target):
        return f"{target} holds a release whose files match its manifest: kept."
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        archive = staging / "release.tar.gz"
        digest = download(url, archive)
        if archive_sha256 and digest != archive_sha256:
            raise ValueError(f"the archive's SHA-256 is {digest}, not the {archive_sha256} expected.")
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staging / "unpacked", filter="data")  # no absolute paths, links out or devices
        except tarfile.TarError as error:
            raise ValueError(f"it is not a .tar.gz of a release directory ({error}).") from None
        release = release_root(staging / "unpacked")
        verdict = check(release, target.name).get("gate", {}).get("verdict", "no verdict recorded")
        if target.exists():  # a damaged copy (intact() said so): out of the way, deleted with the staging
            os.rename(target, staging / "damaged")
        try:
            os.rename(release, target)
        except OSError:
            if not intact(target):  # another pod's init container put the same release in meanwhile
                raise
        return f"{target} now holds the release of {url} ({verdict} by mnist-push), every file checked."
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(url: str, path: Path) -> str:
    """The archive onto the volume, hashed on the way; its SHA-256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as answer, open(path, "wb") as file:
            for block in iter(lambda: answer.read(1 << 20), b""):
                digest.update(block)
                file.write(block)
    except urllib.error.URLError as error:
        raise OSError(f"fetching it failed: {getattr(error, 'reason', error)}.") from None
    return digest.hexdigest()


def release_root(unpacked: Path) -> Path:
    """The unpacked release: the archive's top, or its one directory."""
    if (unpacked / "manifest.json").is_file():
        return unpacked
    inside = [path for path in unpacked.iterdir() if (path / "manifest.json").is_file()]
    if len(inside) != 1:
        raise ValueError("the archive holds no release (a manifest.json at its top or in one directory).")
    return inside[0]


def check(release: Path, version: str) -> dict:
    """mnist-push's release.json for this version, and every file the manifest lists with its SHA-256: the
    release record; raises ValueError otherwise."""
    record = release_of(release)
    if record is None:
        raise ValueError("it holds no release.json: push the run with mnist-push, then archive the version "
                         "directory it wrote (tar -czf release-N.tar.gz -C BASE N).")
    if str(record.get("version")) != version:
        raise ValueError(f"its release.json is of version {record.get('version')}, not {version}: set the "
                         "version in the ConfigMap to the one mnist-push gave it.")
    check_files(release, json.loads((release / "manifest.json").read_text()))
    return record


def intact(release: Path) -> bool:
    try:
        check(release, release.name)
    except (OSError, ValueError, KeyError):
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
