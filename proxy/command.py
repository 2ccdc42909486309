"""What every `signing-proxy` command shares: its exit code for a bad config, loading (and
building) the config with its problems printed, and running the event loop. Kept apart from
`cli` (which dispatches to the commands) so that a command never imports the dispatcher back."""

from __future__ import annotations

import asyncio
import sys
from typing import Final

from proxy.app import Runtime
from proxy.config import Config, ConfigError, load_config
from proxy.startup import load_runtime

EXIT_CONFIG: Final = 2


def load_or_report(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as err:
        report_config_error(err)
        return None


def build_or_report(path: str) -> Runtime | None:
    """The config at `path` loaded and built as `run` builds it (TLS contexts, signers, key
    files; nothing that needs the network), or None after printing every problem."""
    try:
        return load_runtime(path)
    except ConfigError as err:
        report_config_error(err)
        return None


def report_config_error(err: ConfigError) -> None:
    print(f"invalid config: {err}", file=sys.stderr)


def run_event_loop(main_coroutine: object) -> None:
    """asyncio.run, on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coroutine)  # type: ignore[arg-type]
    else:
        uvloop.run(main_coroutine)  # type: ignore[arg-type]
