"""Third-party schemes: signer classes registered by installed packages under the entry-point
group `signing_proxy.schemes` (README: "Write your own scheme").

An entry point is `name = "package.module:SignerClass"`. The class keeps the built-ins' contract:
`class SignerClass(Signer[NameConfig])`, `NameConfig` being a `SignerConfig` with
`scheme: Literal["name"]`, validated like theirs and shown by `signing-proxy schema`. Like a
built-in, a plugin is imported when a config names it (`proxy.signers.registry`); one that fails
to load is left out and its error kept, so `check` can say why a route's scheme is unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from proxy.signers.base import Signer, SignerConfig

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

GROUP: Final = "signing_proxy.schemes"


def find_plugins() -> list[EntryPoint]:
    """The installed packages' entry points of the group, by name (nothing imported)."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group=GROUP), key=lambda point: point.name)


def source(point: EntryPoint) -> str:
    """Where a plugin comes from, for its error: `module:Class (package)`."""
    return f"{point.value} ({point.dist.name if point.dist else 'unknown package'})"


def load_plugin(point: EntryPoint) -> type[Signer[Any]]:
    """The plugin's signer class, checked; raises with the reason it cannot be used."""
    signer = point.load()
    if not (isinstance(signer, type) and issubclass(signer, Signer)):
        raise TypeError("the entry point must name a Signer subclass")
    model = getattr(signer, "config_model", None)
    if not (isinstance(model, type) and issubclass(model, SignerConfig)):
        raise TypeError("config_model must be a SignerConfig subclass")
    if model.scheme_name() != point.name or getattr(signer, "scheme", None) != point.name:
        raise TypeError(f"scheme and config_model.scheme must be Literal[{point.name!r}]")
    return signer
