"""The registry of signing schemes: the config's `scheme:` name -> signer class, in one place.

A scheme's module is imported when a config names it, not before: a sidecar with one bearer
route never loads cryptography, http-sf or botocore, nor the other schemes' models
(bench/footprint.py). `schema` and the error for an unknown scheme still see every scheme.
"""

from __future__ import annotations

from typing import Any, Final

from proxy.signers.base import OnCredentialRefresh, Signer, SignerConfig

# One line per scheme: its name and where its signer class lives, as "module:class" (an entry
# point's form). The order is the order of the README's table and of the JSON schema.
SCHEMES: Final[dict[str, str]] = {
    "bearer": "proxy.signers.bearer:BearerSigner",
    "header": "proxy.signers.header:HeaderSigner",
    "devresults": "proxy.signers.devresults:DevResultsSigner",
    "devo": "proxy.signers.devo:DevoSigner",
    "devo-token": "proxy.signers.devo:DevoTokenSigner",
    "jscrambler": "proxy.signers.jscrambler:JscramblerSigner",
    "devengo": "proxy.signers.devengo:DevengoSigner",
    "aws-sigv4": "proxy.signers.aws_sigv4:AwsSigV4Signer",
    "http-message-signatures": "proxy.signers.http_message_signatures:HttpMessageSignaturesSigner",
    "http-signatures-cavage": "proxy.signers.cavage:CavageSigner",
    # -- registry end --
}

_loaded: dict[str, type[Signer[Any]]] = {}


def scheme_names() -> list[str]:
    """Every scheme a config may name, in the registry's order."""
    return list(SCHEMES)


def signer_class(scheme: str) -> type[Signer[Any]]:
    """The signer class of `scheme`, its module imported on first use. KeyError if unknown."""
    cls = _loaded.get(scheme)
    if cls is None:
        module, _, name = SCHEMES[scheme].partition(":")
        # __import__, not importlib.import_module: `python -X importtime` (bench/footprint.py)
        # sees only the imports that take this path.
        cls = getattr(__import__(module, fromlist=[name]), name)
        if not (isinstance(cls, type) and issubclass(cls, Signer)) or cls.scheme != scheme:
            raise TypeError(f"{SCHEMES[scheme]} is not the Signer of the scheme {scheme!r}")
        _loaded[scheme] = cls
    return cls


def signer_classes() -> list[type[Signer[Any]]]:
    """Every scheme's signer class (all imported): for `schema` and the tests."""
    return [signer_class(scheme) for scheme in SCHEMES]


def build_signer(
    config: SignerConfig, *, route: str = "", on_refresh: OnCredentialRefresh | None = None
) -> Signer[Any]:
    return signer_class(config.scheme).create(config, route=route, on_refresh=on_refresh)
