"""The private aiohttp hooks the proxy relies on, listed and checked in one place.

A proxy must send what the app sent and relay what the upstream answered, and aiohttp has no
public switch for two things it adds on its own: the client's automatic request headers
(Accept, User-Agent, ...) and the server's `Server`/`Content-Type` response headers. The proxy
turns them off through the private members below. A release of aiohttp that renames one would
not fail loudly: the proxy would add headers, or fail every request with a body. So `run`
checks for every hook at start-up and refuses to start, naming the installed aiohttp, when one
is missing (`require_hooks`); the range in pyproject.toml is the one CI tests.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Final, Literal

import aiohttp
from aiohttp import web

HookKind = Literal[
    "class attribute", "method", "coroutine method", "instance attribute", "keyword argument"
]


@dataclass(frozen=True, slots=True)
class Hook:
    """One private member of aiohttp, and where the proxy uses it."""

    owner: type
    name: str
    kind: HookKind
    used_by: str

    @property
    def qualified_name(self) -> str:
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    def present(self) -> bool:
        if self.kind == "class attribute":
            # Set on the class itself (aiohttp >= 3.11.8 reads it there); an older aiohttp
            # only has the instance attribute `skip_auto_headers`, never read from the class.
            return any(self.name in vars(cls) for cls in self.owner.__mro__)
        if self.kind == "instance attribute":
            return hasattr(self.owner(), self.name)
        if self.kind == "keyword argument":
            return self.name in inspect.signature(self.owner).parameters
        member = getattr(self.owner, self.name, None)
        if self.kind == "coroutine method":
            return inspect.iscoroutinefunction(member)
        return callable(member)


HOOKS: Final = (
    Hook(
        aiohttp.ClientSession,
        "request_class",
        "keyword argument",
        "proxy.forward.Forwarder (installs _VerbatimRequest; not in aiohttp's documentation)",
    ),
    Hook(
        aiohttp.ClientRequest,
        "_skip_auto_headers",
        "class attribute",
        "proxy.forward._VerbatimRequest (the request headers aiohttp must not add)",
    ),
    Hook(
        aiohttp.ClientRequest,
        "update_auto_headers",
        "method",
        "proxy.forward._VerbatimRequest (overridden: no automatic request headers)",
    ),
    Hook(
        web.StreamResponse,
        "_prepare_headers",
        "coroutine method",
        "proxy.responses.AsGivenStreamResponse (no Server banner, no added Content-Type)",
    ),
    Hook(
        web.StreamResponse,
        "_headers",
        "instance attribute",
        "proxy.responses.AsGivenStreamResponse (the headers about to be written)",
    ),
)


class UnsupportedAiohttp(RuntimeError):
    """The installed aiohttp lacks a hook the proxy relies on."""


def missing_hooks() -> list[Hook]:
    return [hook for hook in HOOKS if not hook.present()]


def require_hooks() -> None:
    """Raise `UnsupportedAiohttp`, naming the installed aiohttp and the range the proxy
    supports, when any hook is missing."""
    missing = missing_hooks()
    if not missing:
        return
    names = ", ".join(f"{hook.qualified_name} ({hook.used_by})" for hook in missing)
    raise UnsupportedAiohttp(
        f"the installed aiohttp {aiohttp.__version__} lacks what the proxy relies on: {names}. "
        f"Install a supported aiohttp ({supported_range()})."
    )


def supported_range() -> str:
    """The aiohttp requirement of the installed signing-proxy, e.g. `aiohttp<4,>=3.11.8`."""
    try:
        requirements = metadata.requires("signing-proxy") or []
    except metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        if requirement.replace(" ", "").startswith(("aiohttp>", "aiohttp<", "aiohttp=")):
            return requirement.split(";", 1)[0].strip()
    return "see pyproject.toml"
