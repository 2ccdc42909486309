"""The process signals of the proxy and the `--workers` supervisor, in one place.

SIGTERM (what Kubernetes sends) asks for a drain, SIGINT (a person's Ctrl-C) for a stop without
the drain delay, SIGHUP for a reload.

The stop's promise, which a pod's grace period is sized by: from SIGTERM to the process's exit
takes at most the drain delay + the shutdown timeout + `STOP_MARGIN_SECONDS`, whatever is in
flight (requests still running at the deadline are cut), in one process or with `--workers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from types import TracebackType
from typing import Final

# After the shutdown deadline: time for the cut requests to write their log lines and for the
# connections and sessions to close.
STOP_MARGIN_SECONDS: Final = 1.0
CUT_WAIT_SECONDS: Final = 0.5  # for the cancelled requests to finish (within the margin)
CLOSE_WAIT_SECONDS: Final = 0.1  # aiohttp's wait per connection once nothing is in flight


class StopSignals:
    """Installs the handlers on the running loop for the duration of a `with` block."""

    def __init__(self, on_hangup: Callable[[], None]) -> None:
        self._stopped = asyncio.Event()
        self.terminated = False  # SIGTERM rather than SIGINT: drain first
        self._handlers: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGTERM: self._on_terminate,
            signal.SIGINT: self._stopped.set,
            signal.SIGHUP: on_hangup,
        }

    def _on_terminate(self) -> None:
        self.terminated = True
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    def drain_delay(self, configured: float) -> float:
        return configured if self.terminated else 0.0

    def __enter__(self) -> StopSignals:
        loop = asyncio.get_running_loop()
        for signum, callback in self._handlers.items():
            loop.add_signal_handler(signum, callback)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._handlers:
            with contextlib.suppress(ValueError):
                loop.remove_signal_handler(signum)
