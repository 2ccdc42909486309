"""What the schemes with expiring credentials (AWS credential sources, OAuth2 tokens) share:
reporting each refresh to the credential metrics, and stopping their background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from proxy.logs import get_logger
from proxy.signers.base import OnCredentialRefresh

RESULT_SUCCESS: Final = "success"
RESULT_ERROR: Final = "error"

log = get_logger("signing_proxy")


def report_refresh(
    on_refresh: OnCredentialRefresh | None, result: str, expiry: float | None, route: str
) -> None:
    """Tell `on_refresh` (the credential metrics) of a refresh: `result` is `RESULT_SUCCESS` or
    `RESULT_ERROR`, `expiry` the credentials' (Unix seconds, None if unknown)."""
    if on_refresh is None:
        return
    try:
        on_refresh(result, expiry)
    except Exception:  # a metrics bug must not stop the refreshing
        log.exception("on_refresh_failed", route=route)


async def cancel_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the background tasks given (None: none), then wait until each has ended."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
