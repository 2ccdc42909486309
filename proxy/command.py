"""What every `signing-proxy` command shares: its exit code for a bad config, loading the config
with its problems printed, and running the event loop. Kept apart from `cli` (which dispatches to
the commands) so that a command never imports the dispatcher back."""

from __future__ import annotations

import asyncio
import sys
from typing import Final

from proxy.config import Config, ConfigError, load_config

EXIT_CONFIG: Final = 2


def load_or_report(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as err:
        print(f"invalid config: {err}", file=sys.stderr)
        return None


def run_event_loop(main_coroutine: object) -> None:
    """asyncio.run, on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coroutine)  # type: ignore[arg-type]
    else:
        uvloop.run(main_coroutine)  # type: ignore[arg-type]
