"""Everything a config builds that needs no network, in one step: `check`, `run` and every
reload (file change or SIGHUP) take it, so a config `check` accepts is one that starts.

Loading validates the file (`proxy.config`); building then makes what the proxy serves with:
TLS contexts from CA files, each route's signer (key files, credential sources; network
refreshes only begin when the server starts them), limits and access rules. A setting that
validated but cannot be used is a `ConfigError` with its key path and line, like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from proxy.app import Runtime
from proxy.config import (
    Config,
    ConfigError,
    ConfigProblem,
    InvalidSetting,
    format_path,
    parse_config,
    read_config_text,
)
from proxy.signers import OnCredentialRefresh
from proxy.yamlsource import YamlError, load_yaml

OnRefreshFor = Callable[[str], OnCredentialRefresh]


def load_runtime(path: str | Path, *, on_refresh_for: OnRefreshFor | None = None) -> Runtime:
    """Read, validate and build the config at `path`. Raises `ConfigError` for every failure."""
    text = read_config_text(path)
    return build_runtime(parse_config(text, str(path)), str(path), text, on_refresh_for)


def build_runtime(
    config: Config,
    source: str,
    text: str | None = None,
    on_refresh_for: OnRefreshFor | None = None,
    *,
    previous: Runtime | None = None,
) -> Runtime:
    """Build `config` (loaded from `source`, whose `text` gives the problem's line); on a
    reload, `previous` lends its unchanged routes' signers and upstream options.

    Raises `ConfigError`: for a setting that cannot be used, its key path and message; for
    anything unexpected, the exception's type only (its message could hold a secret).
    """
    try:
        return Runtime.build(config, on_refresh_for, previous)
    except InvalidSetting as err:
        path = err.key
        problem = ConfigProblem(format_path(path), _line_of(path, source, text), err.message)
    except Exception as err:
        problem = ConfigProblem("", 1, f"the config cannot be built ({type(err).__name__})")
    raise ConfigError(source, [problem])


def _line_of(path: tuple[str | int, ...], source: str, text: str | None) -> int:
    try:
        if text is None:
            text = Path(source).read_text(encoding="utf-8")
        return load_yaml(text).line_of(path)
    except (OSError, UnicodeDecodeError, YamlError):
        return 1
