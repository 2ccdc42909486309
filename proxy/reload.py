"""Noticing config changes: the config file and every file it references, polled.

Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink in the mount directory,
which inotify on the file itself does not see and `subPath` mounts never get; polling the
resolved path and the content of each file sees every kind of change, cheaply (they are small).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from proxy.config import Config
from proxy.secrets import Secret

Fingerprint = tuple[tuple[str, str | None, str | None], ...]


def watched_files(config: Config, config_path: str | Path) -> list[Path]:
    """The config file, every `{file: PATH}` secret (the interception CA's included) and every
    `tls.ca_file` it references."""
    paths = [Path(config_path)]
    for route in config.routes:
        for name in type(route.signer).model_fields:
            value = getattr(route.signer, name)
            if isinstance(value, Secret) and value.source.startswith("file:"):
                paths.append(Path(value.source.removeprefix("file:")))
        if route.tls.ca_file:
            paths.append(Path(route.tls.ca_file))
    if config.interception is not None:  # a rotated CA is picked up like a rotated key
        for secret in (config.interception.ca_cert, config.interception.ca_key):
            if secret.source.startswith("file:"):
                paths.append(Path(secret.source.removeprefix("file:")))
    return list(dict.fromkeys(paths))


def fingerprint(paths: list[Path]) -> Fingerprint:
    entries = []
    for path in paths:
        try:
            real = os.path.realpath(path)
            digest = hashlib.sha256(Path(real).read_bytes()).hexdigest()
        except OSError:
            real, digest = None, None
        entries.append((str(path), real, digest))
    return tuple(entries)


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

    def watch(self, paths: list[Path]) -> None:
        """Follow a new set of files (after a reload). The baseline is not reset here: a file
        that changed while the reload read it is seen on the next poll (at worst one extra,
        harmless reload)."""
        self.paths = paths

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
            current = await asyncio.to_thread(fingerprint, self.paths)
            if current != self._last:
                self._last = current
                await self.on_change()
