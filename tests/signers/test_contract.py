"""The signer contract itself: one name per scheme, the config model bound by the generic."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import ValidationError

from proxy.config import RouteConfig
from proxy.secrets import SecretValue
from proxy.signers import SIGNER_CLASSES, SIGNERS, build_signer, signer_class
from proxy.signers.base import (
    InvalidBody,
    Signer,
    SignerConfig,
    SigningContext,
    SigningRefused,
    SignResult,
    UnsupportedMediaType,
    UpstreamRequest,
)
from proxy.signers.bearer import BearerConfig, BearerSigner


class _DemoConfig(SignerConfig):
    scheme: Literal["demo-contract"]
    token: SecretValue


class _DemoSigner(Signer[_DemoConfig]):
    def __init__(self, config: _DemoConfig) -> None:
        self.token = config.token.reveal()

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        return SignResult(request, "")


def test_scheme_and_config_model_come_from_the_generic_parameter() -> None:
    assert _DemoSigner.scheme == "demo-contract"
    assert _DemoSigner.config_model is _DemoConfig
    built = _DemoSigner.create(
        _DemoConfig(scheme="demo-contract", token="t"), route="r", on_refresh=None
    )
    assert isinstance(built, _DemoSigner)
    assert built.token == "t"


def test_a_second_spelling_of_the_name_must_agree() -> None:
    with pytest.raises(TypeError, match="differs"):

        class _Wrong(Signer[_DemoConfig]):
            scheme = "other"

            def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
                raise NotImplementedError


def test_a_config_without_a_literal_name_is_refused() -> None:
    class _Unnamed(SignerConfig):
        pass

    with pytest.raises(TypeError, match="Literal"):

        class _Bad(Signer[_Unnamed]):
            def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
                raise NotImplementedError


def test_every_registered_scheme_is_named_by_its_config() -> None:
    for cls in SIGNER_CLASSES:
        assert cls.scheme == cls.config_model.scheme_name()
        assert SIGNERS[cls.scheme] is cls
    assert isinstance(build_signer(BearerConfig(scheme="bearer", token="t")), BearerSigner)


def test_refusals_carry_their_status_and_code() -> None:
    assert (UnsupportedMediaType.status, UnsupportedMediaType.code) == (
        415,
        "unsupported_media_type",
    )
    assert (InvalidBody.status, InvalidBody.code) == (400, "invalid_body")
    assert issubclass(InvalidBody, SigningRefused)
    assert not issubclass(SigningRefused, ValueError)  # no longer overloading ValueError


def test_a_registry_line_must_name_its_schemes_signer(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.signers import registry

    monkeypatch.setitem(registry.SCHEMES, "bearer-typo", "proxy.signers.bearer:BearerSigner")
    with pytest.raises(TypeError, match="not the Signer of the scheme 'bearer-typo'"):
        signer_class("bearer-typo")
    monkeypatch.setitem(registry.SCHEMES, "not-a-signer", "proxy.signers.bearer:BearerConfig")
    with pytest.raises(TypeError, match="not the Signer"):
        signer_class("not-a-signer")


def test_the_signer_field_takes_a_built_model_as_the_union_did() -> None:
    built = BearerConfig(scheme="bearer", token="t")
    route = RouteConfig.model_validate(
        {"name": "r", "match": {"path_prefix": "/r"}, "upstream": "https://x.example.com",
         "signer": built}
    )  # fmt: skip
    assert route.signer is built
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        RouteConfig.model_validate(
            {"name": "r", "match": {"path_prefix": "/r"}, "upstream": "https://x.example.com",
             "signer": _DemoConfig(scheme="demo-contract", token="t")}
        )  # fmt: skip
