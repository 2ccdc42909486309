"""Third-party schemes: signer classes registered by installed packages under the entry-point
group `signing_proxy.schemes` (README: "Write your own scheme").

An entry point is `name = "package.module:SignerClass"`. The class keeps the built-ins' contract:
`class SignerClass(Signer[NameConfig])`, `NameConfig` being a `SignerConfig` with
`scheme: Literal["name"]`, validated like theirs and shown by `signing-proxy schema`. A plugin
that fails to load is left out and its error kept, so `check` can say why a route's scheme is
unknown.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Final

from proxy.signers.base import Signer, SignerConfig

GROUP: Final = "signing_proxy.schemes"


def load_plugins(taken: set[str]) -> tuple[list[type[Signer[Any]]], dict[str, str]]:
    """(the plugin signer classes, {entry point name: why it was not loaded})."""
    loaded: list[type[Signer[Any]]] = []
    errors: dict[str, str] = {}
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        source = f"{point.value} ({point.dist.name if point.dist else 'unknown package'})"
        try:
            signer = point.load()
            _check(point.name, signer, taken)
        except Exception as err:  # a broken plugin must not stop the proxy's own schemes
            errors[point.name] = f"{source}: {type(err).__name__}: {err}"
            continue
        taken.add(point.name)
        loaded.append(signer)
    return loaded, errors


def _check(name: str, signer: object, taken: set[str]) -> None:
    if not (isinstance(signer, type) and issubclass(signer, Signer)):
        raise TypeError("the entry point must name a Signer subclass")
    model = getattr(signer, "config_model", None)
    if not (isinstance(model, type) and issubclass(model, SignerConfig)):
        raise TypeError("config_model must be a SignerConfig subclass")
    if model.scheme_name() != name or getattr(signer, "scheme", None) != name:
        raise TypeError(f"scheme and config_model.scheme must be Literal[{name!r}]")
    if name in taken:
        raise ValueError(f"scheme {name!r} is already taken")
