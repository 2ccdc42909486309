"""Signing schemes: the contract (`proxy.signers.base`), the registry of schemes
(`proxy.signers.registry`: built-ins and installed plugins, each imported when a config names
it) and the `signer:` field of a route (`proxy.signers.field`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from proxy.signers.base import (
    BodyDigest,
    CredentialsUnavailable,
    InvalidBody,
    OnCredentialRefresh,
    Signer,
    SignerConfig,
    SigningContext,
    SigningRefused,
    SignResult,
    SpooledBody,
    UnsupportedMediaType,
    UpstreamRequest,
)
from proxy.signers.field import SchemeConfigField
from proxy.signers.registry import (
    SCHEMES,
    build_signer,
    find_signer_class,
    plugin_classes,
    plugin_errors,
    scheme_names,
    signer_class,
    signer_classes,
)

# The `signer:` field of a route: validated by the model of the scheme it names; its JSON
# schema is the discriminated union of every scheme's model.
if TYPE_CHECKING:
    AnySignerConfig = SignerConfig
else:
    AnySignerConfig = Annotated[SignerConfig, SchemeConfigField]


def __getattr__(name: str) -> Any:
    """The registry as constants, every scheme imported: for tools and tests that look at all
    schemes (`SIGNERS` name -> class, `SIGNER_CLASSES`, `BUILTIN_SCHEMES`, `PLUGIN_CLASSES`,
    `PLUGIN_ERRORS`). The proxy itself asks `signer_class(name)`."""
    if name == "SIGNERS":
        return {cls.scheme: cls for cls in signer_classes()}
    if name == "SIGNER_CLASSES":
        return tuple(signer_classes())
    if name == "BUILTIN_SCHEMES":
        return frozenset(SCHEMES)
    if name == "PLUGIN_CLASSES":
        return plugin_classes()
    if name == "PLUGIN_ERRORS":
        plugin_classes()
        return plugin_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCHEMES",
    "AnySignerConfig",
    "BodyDigest",
    "CredentialsUnavailable",
    "InvalidBody",
    "OnCredentialRefresh",
    "SignResult",
    "Signer",
    "SignerConfig",
    "SigningContext",
    "SigningRefused",
    "SpooledBody",
    "UnsupportedMediaType",
    "UpstreamRequest",
    "build_signer",
    "find_signer_class",
    "plugin_classes",
    "plugin_errors",
    "scheme_names",
    "signer_class",
    "signer_classes",
]
