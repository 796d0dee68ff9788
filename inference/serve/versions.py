"""Model versions: a base directory of numbered versions, as TF Serving lays them out, served by one rule.

    BASE/1/  a release pushed by mnist-push, a run directory or an ensemble bundle
    BASE/2/  the next one, pushed while version 1 answers

The version served is the highest complete one not withdrawn
(inference.releases.serving_order, which mnist-push shares): a push writes
the manifest last and renames the version into place, and a copy by hand must
too (copy the manifest last, or copy the version under another name such as
BASE/.3 and rename it to 3). The server
looks at BASE every --poll-seconds and on SIGHUP. Another version to serve is
loaded and checked as at start (its files' SHA-256, a warm-up inference of
each model) in a thread, while the old version answers; only then does it
answer requests that name no version, and the old one is retired once the
requests it already holds are answered (TF Serving's availability-preserving
policy). A version that fails its check is refused with one log line and not
tried again until its files change; the served one goes on. Withdrawing the
served version (mnist-push --rollback) or removing its directory falls back,
by the same rule, to the next one.
A version's number names its files once: files changed in place under the
served number are not loaded again (copy them in as the next number).

Loading and retiring go through MLServer's model registry (reached through
inference.serve.mlserver_hooks: no public call loads a model at run time);
its default version is the highest loaded one, so unversioned requests follow.
A directory served alone is a version too (lone_version), so every answer,
metric and log line names one.
"""
import asyncio
import dataclasses
import logging
import signal
import time
from functools import partial
from pathlib import Path

import numpy as np
from mlserver.registry import MultiModelRegistry

from mnist_cnn_progression.inference.contract import IMAGE_SHAPE
from mnist_cnn_progression.inference.releases import RELEASE, numbered, release_of, serving_order
from mnist_cnn_progression.inference.serve.catalogue import Served, catalogue, release_card
from mnist_cnn_progression.inference.serve.runtime import model_settings

log = logging.getLogger("mnist-serve.versions")  # on stderr with the server's own lines (transport.log_on_stderr)


def files_signature(path: Path) -> tuple:
    """Every file's name, size and modification time: a refused version is tried again once this changes."""
    return tuple(sorted((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns)
                        for file in path.rglob("*") if file.is_file() and (stat := file.stat())))


def prepare(path: Path, threads: int | None, require_release: bool) -> tuple[list[Served], dict | None]:
    """The models of a run directory or bundle, every file checked and each model run once on a blank image, their
    metadata with the release card; and the release (None for a version copied in by hand).

    The warm-up inference is what makes a model ready: none is served before it has answered one.
    Raises OSError, ValueError or KeyError with a plain sentence, ONNX Runtime's own errors included.
    """
    release = release_of(path)
    if release is None and require_release:
        raise ValueError(f"{path} has no {RELEASE} (copied in by hand, not pushed by mnist-push), and "
                         "--require-release refuses such a version")
    try:
        models = catalogue(path, threads=threads)
        for served in models:
            began = time.perf_counter()
            served.ensemble.predict(np.zeros((1, *IMAGE_SHAPE), np.float32))
            log.info("Model %s answered its warm-up inference in %.0f ms.", served.name,
                     (time.perf_counter() - began) * 1e3)
    except (OSError, ValueError, KeyError):
        raise
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises plain Exceptions for a graph it cannot run
        raise ValueError(f"ONNX Runtime cannot run the models in {path}: {one_line(error)}.") from None
    card = release_card(release)
    return [dataclasses.replace(served, about={**served.about, **card}) for served in models], release


def accuracy(models: list[Served], release: dict | None) -> str:
    """The float32 ensemble's test accuracy, as its release.json or (copied in by hand) its bundle records it."""
    recorded = (release or {}).get("accuracy")
    if isinstance(recorded, dict) and isinstance(recorded.get("float32"), float):
        return f"accuracy {recorded['float32']:.4f} by its {RELEASE}"
    ensemble = next(served for served in models if served.name == "ensemble")
    return f"accuracy {ensemble.about['test_accuracy']} by its bundle's manifest"


def lone_version(path: Path, release: dict | None) -> int:
    """The version of a directory served alone: its name when a number (/models/3), else its release's, else 1."""
    if path.name.isascii() and path.name.isdigit():
        return int(path.name)
    return release["version"] if release and isinstance(release.get("version"), int) else 1


class Rollout:
    """What the server serves from --models: the versions of a base directory, or one run directory or bundle."""

    def __init__(self, path: Path, *, threads: int | None, mode: str, max_batch: int, require_release: bool = False):
        self.path, self.threads, self.mode, self.max_batch = Path(path), threads, mode, max_batch
        self.require_release = require_release
        self.base = False  # whether path is a base directory of numbered versions
        self.version: int | None = None  # the version answering requests that name none
        self.loaded: dict[str, list[int]] = {}  # model name -> its versions loaded now
        self.names: dict[int, list[str]] = {}  # version -> its model names
        self.accuracy: dict[int, str] = {}  # version -> its accuracy, for the log lines
        self.refused: dict[int, tuple] = {}  # version -> its files' signature when it was refused
        self.models: list[Served] = []

    def first(self) -> None:
        """Before any port opens: load the highest complete version that passes its check (raises with a sentence)."""
        self.base = bool(numbered(self.path))
        if not self.base:
            self.models, release = prepare(self.path, self.threads, self.require_release)
            self.version = lone_version(self.path, release)
        else:
            for version in self.wanted():
                try:
                    self.models, release = prepare(self.path / str(version), self.threads, self.require_release)
                except (OSError, ValueError, KeyError) as error:
                    self.refuse(version, error)
                    continue
                self.version = version
                break
        if self.version is None:
            raise ValueError(f"{self.path} holds no complete version, not withdrawn, that passes its check (a "
                             "version directory is complete once its bundle's manifest.json is in it).")
        self.take(self.version, self.models, release)
        log.info("Version %d of %s answers (%s).", self.version, self.path, self.accuracy[self.version])

    def take(self, version: int, models: list[Served], release: dict | None) -> None:
        """Note a version's accuracy for the log lines; warn when it comes without a release card."""
        self.accuracy[version] = accuracy(models, release)
        if release is None:
            log.warning("Version %d in %s has no %s (copied in by hand, not pushed by mnist-push): it is served "
                        "without a release card; --require-release would refuse it.", version, self.path, RELEASE)

    def wanted(self) -> list[int]:
        """The versions BASE may serve (inference.releases.serving_order), less those refused as they are now."""
        return [version for version in serving_order(self.path) if version not in self.refused
                or self.refused[version] != files_signature(self.path / str(version))]

    def refuse(self, version: int, error: Exception) -> None:
        self.refused[version] = files_signature(self.path / str(version))
        serving = f"version {self.version} goes on serving" if self.version is not None else "a lower one is tried"
        log.error("Version %d in %s is refused: %s; %s.", version, self.path, one_line(error), serving)

    def settings(self, models: list[Served], version: int) -> list:
        """MLServer's ModelSettings of a version's models; their metadata carries the version and those loaded."""
        return [model_settings(dataclasses.replace(served, about={**served.about, "version": str(version)}),
                               mode=self.mode, max_batch=self.max_batch, version=str(version),
                               versions=partial(self.versions_of, served.name)) for served in models]

    def versions_of(self, name: str) -> list[str]:
        return [str(version) for version in sorted(self.loaded.get(name, []))]

    def start_settings(self) -> list:
        """The first version's settings, for MLServer.start; it is counted as loaded from here on."""
        self.note_loaded(self.version, self.models)
        return self.settings(self.models, self.version)

    def note_loaded(self, version: int, models: list[Served]) -> None:
        self.names[version] = [served.name for served in models]
        for served in models:
            self.loaded.setdefault(served.name, []).append(version)

    async def watch(self, registry: MultiModelRegistry, poll_seconds: float, served: list) -> None:
        """Until cancelled: every poll_seconds (never when 0) and on SIGHUP, serve the version the rule picks."""
        if not self.base:
            return
        wake = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, wake.set)
        while True:
            try:
                await asyncio.wait_for(wake.wait(), poll_seconds or None)
            except TimeoutError:
                pass
            wake.clear()
            try:
                await self.update(registry, served)
            except Exception as error:  # noqa: BLE001 - whatever a new version does, the served one goes on
                log.error("Serving a new version of %s failed: %s; version %d goes on serving.",
                          self.path, one_line(error), self.version)

    async def update(self, registry: MultiModelRegistry, served: list) -> None:
        wanted = self.wanted()
        if not wanted or wanted[0] == self.version:
            return
        version = wanted[0]
        try:  # ONNX Runtime builds its sessions in a thread: the event loop goes on answering meanwhile
            models, release = await asyncio.to_thread(prepare, self.path / str(version), self.threads,
                                                      self.require_release)
        except (OSError, ValueError, KeyError) as error:
            return self.refuse(version, error)
        self.take(version, models, release)
        # Loading a model whose load() never waits leaves no moment in which the new default is not ready.
        new = self.settings(models, version)
        for settings in new:
            await registry.load(settings)
        served[:] = new
        old, self.version = self.version, version
        self.note_loaded(version, models)
        log.info("Version %d in %s answers now (%s); version %d (%s) is retired once its requests are answered.",
                 version, self.path, self.accuracy[version], old, self.accuracy.pop(old))
        retired = self.names.pop(old)
        for name in retired:
            self.loaded[name].remove(old)
        await asyncio.gather(*[registry.unload_version(name, str(old)) for name in retired])


def one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text.rstrip(".") or type(error).__name__
