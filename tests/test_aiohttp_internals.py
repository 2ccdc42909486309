"""The private aiohttp hooks the proxy relies on: present in the installed aiohttp, and a
missing one stops `run` with exit 1 naming the installed aiohttp (never a traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web, web_protocol

from proxy.aiohttp_internals import (
    HOOKS,
    Hook,
    UnsupportedAiohttp,
    missing_hooks,
    require_hooks,
)

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)


def test_every_hook_is_present_in_the_installed_aiohttp() -> None:
    assert missing_hooks() == []
    require_hooks()


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: hook.name)
def test_a_missing_hook_is_named_with_the_aiohttp_version(
    hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = hook.owner
    if hook.kind == "instance attribute":
        # Removed the way a release that renamed it would: instances no longer get it.
        assert isinstance(owner, type)
        init = owner.__init__

        def without(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            delattr(self, hook.name)

        monkeypatch.setattr(owner, "__init__", without)
    elif hook.kind == "keyword argument":
        monkeypatch.setattr(owner, "__init__", lambda self, other=None: None)
    elif isinstance(owner, type):  # from each aiohttp class that defines it
        for cls in owner.__mro__:
            if cls.__module__.startswith("aiohttp.") and hook.name in vars(cls):
                monkeypatch.delattr(cls, hook.name)
    else:
        monkeypatch.delattr(owner, hook.name)
    assert missing_hooks() == [hook]
    with pytest.raises(UnsupportedAiohttp) as caught:
        require_hooks()
    message = str(caught.value)
    assert f"aiohttp {aiohttp.__version__}" in message
    assert hook.qualified_name in message
    assert "aiohttp<4,>=" in message  # the supported range, from the package's metadata


def test_a_method_inherited_from_asyncio_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """`RequestHandler.eof_received` is aiohttp's; asyncio's `Protocol` has one that does
    nothing, which a release dropping aiohttp's would leave in place."""
    monkeypatch.delattr(web_protocol.RequestHandler, "eof_received")
    assert hasattr(web_protocol.RequestHandler, "eof_received")  # asyncio's
    assert [hook.qualified_name for hook in missing_hooks()] == [
        "aiohttp.web_protocol.RequestHandler.eof_received"
    ]


def test_an_aiohttp_before_3_11_8_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp < 3.11.8 keeps the skipped headers on each instance only: a class attribute of
    that name is never read there, and every request with a body fails. Inherited from a
    subclass of ours does not count."""
    monkeypatch.delattr(aiohttp.ClientRequest, "_skip_auto_headers")
    from proxy import forward

    assert "_skip_auto_headers" in vars(forward._VerbatimRequest)  # ours, not aiohttp's
    assert [hook.name for hook in missing_hooks()] == ["_skip_auto_headers"]


_RUN_WITHOUT_HOOK = """
import sys
from aiohttp import web, web_protocol
del web.StreamResponse._prepare_headers
from proxy.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_run_refuses_to_start_without_a_hook(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "routes: [{name: a, match: {path_prefix: /}, upstream: 'http://127.0.0.1:1', "
        "signer: {scheme: bearer, token: t}}]"
    )
    result = subprocess.run(
        [sys.executable, "-c", _RUN_WITHOUT_HOOK, "run", "--config", str(config),
         "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"the installed aiohttp {aiohttp.__version__} lacks" in result.stderr
    assert "StreamResponse._prepare_headers" in result.stderr
    assert "Traceback" not in result.stderr
    assert web.StreamResponse._prepare_headers  # this process's aiohttp is untouched
