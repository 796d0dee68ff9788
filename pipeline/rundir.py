"""What keeps a run directory sound: its lock, the removal of what killed runs left, and its fingerprints.

Its files are written through inference.files (staged directories, atomic JSON), imported from there.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from mnist_cnn_progression.inference.files import UNFINISHED
from mnist_cnn_progression.pipeline.errors import PipelineError

LEFT_BY_OLDER_REPORTS = ".report-"  # the report's temporaries before it wrote through staged_directory


def clean_unfinished(directory: Path) -> None:
    """Remove what killed runs left half-written (call only while holding the run lock)."""
    if directory.exists():
        leftovers = [*directory.rglob(f"{UNFINISHED}*"), *directory.glob(f"{LEFT_BY_OLDER_REPORTS}*")]
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def fingerprint(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def run_lock(run_dir: Path, task: str | None = None):
    """An OS-level lock, released by the kernel when the process dies, however it dies.

    One per task: the run's own lock (run_dir/.lock) for a single-process run
    or the chief of a multi-worker run, and for each other worker of a
    multi-worker run a lock of its own, run_dir/workers/<task>/.lock, so that
    the workers share the run directory but no task runs twice.
    """
    lock_dir = run_dir if task is None else run_dir / "workers" / task
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            what = run_dir if task is None else f"{task} of {run_dir}"
            raise PipelineError(f"{what} is in use by another run ({holder}); wait for it to finish "
                                f"or choose another --run-dir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
