"""The registry of signing schemes: the config's `scheme:` name -> signer class, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from proxy.signers.aws_sigv4 import AwsSigV4Signer
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
from proxy.signers.bearer import BearerSigner
from proxy.signers.cavage import CavageSigner
from proxy.signers.devengo import DevengoSigner
from proxy.signers.devo import DevoSigner, DevoTokenSigner
from proxy.signers.devresults import DevResultsSigner
from proxy.signers.header import HeaderSigner
from proxy.signers.hmac import HmacSigner
from proxy.signers.http_message_signatures import HttpMessageSignaturesSigner
from proxy.signers.jscrambler import JscramblerSigner
from proxy.signers.oauth2 import OAuth2Signer
from proxy.signers.plugins import load_plugins
from proxy.signers.query_key import QueryKeySigner

# One line per scheme. The order is the order of the README's table and of the JSON schema.
SIGNER_CLASSES: tuple[type[Signer[Any]], ...] = (
    BearerSigner,
    HeaderSigner,
    QueryKeySigner,
    DevResultsSigner,
    DevoSigner,
    DevoTokenSigner,
    JscramblerSigner,
    DevengoSigner,
    AwsSigV4Signer,
    OAuth2Signer,
    HttpMessageSignaturesSigner,
    CavageSigner,
    HmacSigner,
    # -- registry end --
)

BUILTIN_SCHEMES: frozenset[str] = frozenset(cls.scheme for cls in SIGNER_CLASSES)
# Installed packages' schemes (entry-point group `signing_proxy.schemes`), after the built-ins.
PLUGIN_CLASSES, PLUGIN_ERRORS = load_plugins(set(BUILTIN_SCHEMES))
SIGNER_CLASSES += tuple(PLUGIN_CLASSES)

SIGNERS: dict[str, type[Signer[Any]]] = {cls.scheme: cls for cls in SIGNER_CLASSES}

# The `signer:` field of a route: a union of every scheme's model, told apart by `scheme`.
# Built from the registry above, so a type checker sees what every member is: a SignerConfig.
if TYPE_CHECKING:
    AnySignerConfig = SignerConfig
else:
    AnySignerConfig = Annotated[
        Union[tuple(cls.config_model for cls in SIGNER_CLASSES)],  # noqa: UP007
        Field(discriminator="scheme"),
    ]


def build_signer(
    config: SignerConfig, *, route: str = "", on_refresh: OnCredentialRefresh | None = None
) -> Signer[Any]:
    return SIGNERS[config.scheme].create(config, route=route, on_refresh=on_refresh)


__all__ = [
    "PLUGIN_CLASSES",
    "PLUGIN_ERRORS",
    "SIGNERS",
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
]
