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

Loading and retiring go through MLServer's model registry, the server's
private `_model_registry` (no public call loads a model at run time); its
default version is the highest loaded one, so unversioned requests follow.
"""
import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Coroutine
from functools import partial
from pathlib import Path

import numpy as np
from mlserver.registry import MultiModelRegistry

from mnist_cnn_progression.inference.contract import IMAGE_SHAPE
from mnist_cnn_progression.inference.releases import numbered, serving_order
from mnist_cnn_progression.inference.serve.catalogue import Served, catalogue
from mnist_cnn_progression.inference.serve.runtime import model_settings

log = logging.getLogger("mnist-serve.versions")  # on stderr with the server's own lines (transport.log_on_stderr)


def files_signature(path: Path) -> tuple:
    """Every file's name, size and modification time: a refused version is tried again once this changes."""
    return tuple(sorted((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns)
                        for file in path.rglob("*") if file.is_file() and (stat := file.stat())))


def prepare(path: Path, threads: int | None) -> list[Served]:
    """The models of a run directory or bundle, every file checked and each model run once on a blank image.

    The warm-up inference is what makes a model ready: none is served before it has answered one.
    Raises OSError, ValueError or KeyError with a plain sentence, ONNX Runtime's own errors included.
    """
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
    return models


class Rollout:
    """What the server serves from --models: one run directory or bundle, or the versions of a base directory."""

    def __init__(self, path: Path, *, threads: int | None, mode: str, max_batch: int):
        self.path, self.threads, self.mode, self.max_batch = Path(path), threads, mode, max_batch
        self.version: int | None = None  # the version answering unversioned requests; None when not versioned
        self.loaded: dict[str, list[int]] = {}  # model name -> its versions loaded now
        self.names: dict[int, list[str]] = {}  # version -> its model names
        self.refused: dict[int, tuple] = {}  # version -> its files' signature when it was refused
        self.models: list[Served] = []

    def first(self) -> None:
        """Before any port opens: load the highest complete version that passes its check (raises with a sentence)."""
        if not numbered(self.path):
            self.models = prepare(self.path, self.threads)
            return
        for version in self.wanted():
            try:
                self.models = prepare(self.path / str(version), self.threads)
            except (OSError, ValueError, KeyError) as error:
                self.refuse(version, error)
                continue
            self.version = version
            return
        raise ValueError(f"{self.path} holds no complete version, not withdrawn, that passes its check (a "
                         "version directory is complete once its bundle's manifest.json is in it).")

    def wanted(self) -> list[int]:
        """The versions BASE may serve (inference.releases.serving_order), less those refused as they are now."""
        return [version for version in serving_order(self.path) if self.refused.get(version)
                != files_signature(self.path / str(version))]

    def refuse(self, version: int, error: Exception) -> None:
        self.refused[version] = files_signature(self.path / str(version))
        serving = f"version {self.version} goes on serving" if self.version is not None else "a lower one is tried"
        log.error("Version %d in %s is refused: %s; %s.", version, self.path, one_line(error), serving)

    def settings(self, models: list[Served], version: int | None) -> list:
        """MLServer's ModelSettings of a version's models; their metadata carries the version and those loaded."""
        if version is None:
            return [model_settings(served, mode=self.mode, max_batch=self.max_batch) for served in models]
        return [model_settings(dataclasses.replace(served, about={**served.about, "version": str(version)}),
                               mode=self.mode, max_batch=self.max_batch, version=str(version),
                               versions=partial(self.versions_of, served.name)) for served in models]

    def versions_of(self, name: str) -> list[str]:
        return [str(version) for version in sorted(self.loaded.get(name, []))]

    def start_settings(self) -> list:
        """The first version's settings, for MLServer.start; it is counted as loaded from here on."""
        self.note_loaded(self.version, self.models)
        return self.settings(self.models, self.version)

    def note_loaded(self, version: int | None, models: list[Served]) -> None:
        self.names[version] = [served.name for served in models]
        for served in models:
            self.loaded.setdefault(served.name, []).append(version)

    def watcher(self, server, poll_seconds: float, served: list) -> Coroutine:
        """What watches BASE, for a task; MLServer's registry is checked here, before the server starts.

        served: the ModelSettings list that readiness and the repository read; each new version replaces its items.
        """
        registry = server._model_registry  # noqa: SLF001 - MLServer 1.7.1 has no public way to load at run time
        if not isinstance(registry, MultiModelRegistry):
            raise RuntimeError("MLServer's model registry is not where 1.7.1 keeps it: check inference.serve.versions.")
        return self.watch(registry, poll_seconds, served)

    async def watch(self, registry: MultiModelRegistry, poll_seconds: float, served: list) -> None:
        """Until cancelled: every poll_seconds (never when 0) and on SIGHUP, serve the version the rule picks."""
        if self.version is None:
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
            models = await asyncio.to_thread(prepare, self.path / str(version), self.threads)
        except (OSError, ValueError, KeyError) as error:
            return self.refuse(version, error)
        # Loading a model whose load() never waits leaves no moment in which the new default is not ready.
        new = self.settings(models, version)
        for settings in new:
            await registry.load(settings)
        served[:] = new
        old, self.version = self.version, version
        self.note_loaded(version, models)
        log.info("Version %d in %s answers now; version %s is retired once its requests are answered.",
                 version, self.path, old)
        retired = self.names.pop(old)
        for name in retired:
            self.loaded[name].remove(old)
        await asyncio.gather(*[registry.unload_version(name, str(old)) for name in retired])


def one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text.rstrip(".") or type(error).__name__
