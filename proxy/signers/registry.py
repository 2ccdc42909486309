"""The registry of signing schemes: the config's `scheme:` name -> signer class, in one place.

A scheme's module is imported when a config names it, not before: a sidecar with one bearer
route never loads cryptography, http-sf, botocore nor the other schemes' models
(bench/footprint.py). Installed plugins (`proxy.signers.plugins`) come after the built-ins and
are imported the same way. `schema` and the error for an unknown scheme see every scheme.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from proxy.signers.base import OnCredentialRefresh, Signer, SignerConfig
from proxy.signers.plugins import find_plugins, load_plugin, source

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

# One line per scheme: its name and where its signer class lives, as "module:class" (an entry
# point's form). The order is the order of the README's table and of the JSON schema.
SCHEMES: Final[dict[str, str]] = {
    "bearer": "proxy.signers.bearer:BearerSigner",
    "header": "proxy.signers.header:HeaderSigner",
    "query-key": "proxy.signers.query_key:QueryKeySigner",
    "devresults": "proxy.signers.devresults:DevResultsSigner",
    "devo": "proxy.signers.devo:DevoSigner",
    "devo-token": "proxy.signers.devo:DevoTokenSigner",
    "jscrambler": "proxy.signers.jscrambler:JscramblerSigner",
    "devengo": "proxy.signers.devengo:DevengoSigner",
    "aws-sigv4": "proxy.signers.aws_sigv4:AwsSigV4Signer",
    "oauth2-client-credentials": "proxy.signers.oauth2:OAuth2Signer",
    "http-message-signatures": "proxy.signers.http_message_signatures:HttpMessageSignaturesSigner",
    "http-signatures-cavage": "proxy.signers.cavage:CavageSigner",
    "hmac": "proxy.signers.hmac:HmacSigner",
    # -- registry end --
}


class _Registry:
    """The classes loaded so far, and the installed plugins (looked up once, when first
    needed: a config that names only built-ins never reads the packages' metadata)."""

    def __init__(self) -> None:
        self.loaded: dict[str, type[Signer[Any]]] = {}
        self._plugins: dict[str, EntryPoint] | None = None
        self.plugin_errors: dict[str, str] = {}

    def plugins(self) -> dict[str, EntryPoint]:
        if self._plugins is None:
            self._plugins = {}
            for point in find_plugins():
                if point.name in SCHEMES or point.name in self._plugins:
                    reason = f"ValueError: scheme {point.name!r} is already taken"
                    self.plugin_errors[point.name] = f"{source(point)}: {reason}"
                else:
                    self._plugins[point.name] = point
        return self._plugins

    def find(self, scheme: str) -> type[Signer[Any]] | None:
        cls = self.loaded.get(scheme)
        if cls is not None:
            return cls
        if scheme in SCHEMES:
            module, _, name = SCHEMES[scheme].partition(":")
            # __import__, not importlib.import_module: `python -X importtime`
            # (bench/footprint.py) sees only the imports that take this path.
            cls = getattr(__import__(module, fromlist=[name]), name)
            if not (isinstance(cls, type) and issubclass(cls, Signer)) or cls.scheme != scheme:
                raise TypeError(f"{SCHEMES[scheme]} is not the Signer of the scheme {scheme!r}")
        else:
            point = self.plugins().get(scheme)
            if point is None or scheme in self.plugin_errors:
                return None
            try:
                cls = load_plugin(point)
            except Exception as err:  # a broken plugin must not stop the proxy's own schemes
                self.plugin_errors[scheme] = f"{source(point)}: {type(err).__name__}: {err}"
                return None
        self.loaded[scheme] = cls
        return cls


_registry = _Registry()


def find_signer_class(scheme: str) -> type[Signer[Any]] | None:
    """The signer class of `scheme`, imported on first use; None if no scheme has that name
    (or its plugin failed to load: `plugin_errors()` says why)."""
    return _registry.find(scheme)


def signer_class(scheme: str) -> type[Signer[Any]]:
    """The signer class of `scheme`; KeyError if there is none."""
    cls = _registry.find(scheme)
    if cls is None:
        raise KeyError(scheme)
    return cls


def signer_classes() -> list[type[Signer[Any]]]:
    """Every usable scheme's class, built-ins first, then plugins by name (all imported)."""
    names = [*SCHEMES, *_registry.plugins()]
    return [cls for cls in map(_registry.find, names) if cls is not None]


def scheme_names() -> list[str]:
    """Every scheme a config may name (plugins loaded to know it), in the registry's order."""
    return [cls.scheme for cls in signer_classes()]


def plugin_classes() -> list[type[Signer[Any]]]:
    """The installed plugins' classes that load (all loaded)."""
    return [cls for cls in signer_classes() if cls.scheme not in SCHEMES]


def plugin_errors() -> dict[str, str]:
    """{plugin scheme: why it is not usable} for the plugins tried so far."""
    return dict(_registry.plugin_errors)


def build_signer(
    config: SignerConfig, *, route: str = "", on_refresh: OnCredentialRefresh | None = None
) -> Signer[Any]:
    return signer_class(config.scheme).create(config, route=route, on_refresh=on_refresh)
