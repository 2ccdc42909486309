"""Noticing config changes: the config file and every file it references, polled.

Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink in the mount directory,
which inotify on the file itself does not see and `subPath` mounts never get; polling the
resolved path and the content of each file sees every kind of change, cheaply (they are small).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from pydantic import BaseModel

from proxy.config import Config
from proxy.logs import get_logger
from proxy.secrets import Secret
from proxy.upstream_tls import TlsConfig, tls_files

log = get_logger("signing_proxy")

Fingerprint = dict[Path, tuple[str | None, str | None]]
"""Each watched file -> (the real path it resolves to, the SHA-256 of its content)."""


def watched_files(config: Config, config_path: str | Path) -> list[Path]:
    """The config file, every `{file: PATH}` secret (`tls.key_password` included) and every TLS
    file (CA bundle, client certificate and key) it references, a token endpoint's too."""
    paths = [Path(config_path), *_secret_files(config)]
    for route in config.routes:
        signer_tls = getattr(route.signer, "tls", None)  # towards a token endpoint
        for tls in (route.tls, signer_tls):
            if isinstance(tls, TlsConfig):
                paths += [Path(path) for path in tls_files(tls)]
    return list(dict.fromkeys(paths))


def _secret_files(model: BaseModel) -> Iterator[Path]:
    """The files of every `{file: PATH}` secret in `model`, at any depth (signers, access)."""
    for name in type(model).model_fields:
        values = getattr(model, name)
        for value in values if isinstance(values, list | tuple) else (values,):
            if isinstance(value, Secret) and value.source.startswith("file:"):
                yield Path(value.source.removeprefix("file:"))
            elif isinstance(value, BaseModel):
                yield from _secret_files(value)


def fingerprint(paths: list[Path]) -> Fingerprint:
    entries: Fingerprint = {}
    for path in paths:
        try:
            real = os.path.realpath(path)
            entries[path] = (real, hashlib.sha256(Path(real).read_bytes()).hexdigest())
        except OSError:
            entries[path] = (None, None)
    return entries


class ConfigWatcher:
    """Calls `on_change` when any watched file's target or content changes."""

    def __init__(
        self, paths: list[Path], on_change: Callable[[], Awaitable[object]], interval: float
    ) -> None:
        self.paths = paths
        self.on_change = on_change
        self.interval = interval
        self._last = fingerprint(paths)
        self._task: asyncio.Task[None] | None = None

    def watch(self, paths: list[Path], baseline: Fingerprint | None = None) -> None:
        """Follow a new set of files (after a reload). A file already followed keeps its
        baseline; a new one has none, so a file that changed while the reload read it is seen
        on the next poll (at worst one extra, harmless reload), unless `baseline` gives its
        state (after a refused config: wait until one of its files changes again)."""
        self.paths = list(dict.fromkeys(paths))
        if baseline:
            self._last = {**self._last, **baseline}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="config-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                current = await asyncio.to_thread(fingerprint, self.paths)
                if current != {path: self._last.get(path) for path in self.paths}:
                    self._last = current
                    await self.on_change()
            except Exception as err:  # `on_change` counts its own failures; this is a bug's
                # last stop: the watcher must outlive it, or no later change is ever applied.
                log.error("config_watch_failed", error_type=type(err).__name__)
