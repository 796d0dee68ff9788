"""Writing files and directories so that none is ever half-written, and hashing them: the one place for both.

A temporary directory's name starts with UNFINISHED, so that whatever a kill
leaves behind is known for what it is (pipeline.rundir.clean_unfinished).
"""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

UNFINISHED = ".unfinished-"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_arrays(*arrays: np.ndarray) -> str:
    """SHA-256 of arrays' types, shapes and contents: the run's data digests and a test set's (inference.releases)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_json(path: Path, value) -> None:
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def copy_file(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, destination)


def check_sha256(path: Path, expected: str, record: str) -> None:
    """The one check of a file a bundle or run records (in `record`): ValueError with a sentence unless it matches."""
    if not path.is_file():
        raise ValueError(f"{path} is missing, though {record} lists it: the copy is incomplete.")
    if sha256(path) != expected:
        raise ValueError(f"{path} does not match its SHA-256 in {record}: the copy is damaged.")


def check_files(bundle: Path, manifest: dict) -> None:
    """Every file a bundle's manifest.json lists, against its SHA-256: a damaged member is caught even where it is
    not loaded."""
    for name, entry in manifest["files"].items():
        check_sha256(bundle / name, entry["sha256"], "manifest.json")


def sha256_matches(path: Path, expected: str) -> bool:
    """Whether the file's SHA-256 is `expected` (a hex digest): the one check of a recorded digest."""
    return sha256(path) == expected


def replace_dir(temporary: Path, destination: Path) -> None:
    """Move a finished directory into place: the old one is renamed aside, the new one in, then the old deleted.

    A directory cannot be renamed over a non-empty one, so this is as close to
    atomic as two renames get: `destination` is never half old and half new,
    a failed second rename puts the old one back, and a kill between the
    renames leaves it aside under an UNFINISHED name.
    """
    old = None
    if destination.exists():
        old = destination.with_name(f"{UNFINISHED}old-{destination.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
    try:
        os.replace(temporary, destination)
    except BaseException:
        if old is not None:
            os.replace(old, destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(final: Path, replace: bool = True):
    """Yield an empty temporary directory beside `final`; on success it replaces `final` (replace_dir), or with
    replace=False is renamed to it, which fails rather than replace a `final` that holds anything.

    On an exception it is removed; after a kill, its UNFINISHED name marks it.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{UNFINISHED}{final.name}-"))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp made it private
        if not replace:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        replace_dir(tmp, final)
