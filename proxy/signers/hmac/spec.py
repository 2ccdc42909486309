"""The parts of an `hmac` signer block (vars, placements, sign) and the shape the plan compiler
reads (`HmacSpec`), apart from the config model so the compiler does not import it back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from proxy.http import check_settable_header
from proxy.secrets import Secret
from proxy.signers.hmac.functions import Algorithm, DigestName, Encoding, NowFormat, RandomKind


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # `check` prints the signer's settings: only those that are set.
        return ((k, v) for k, v in super().__repr_args__() if v not in (None, {}, [], ()))


class VarSpec(_Model):
    """One var: exactly one of `now`, `random` or `template`."""

    now: NowFormat | None = Field(default=None, description="The signing time, in this format.")
    random: RandomKind | None = Field(
        default=None,
        description="A fresh random value per request (uuid4, or hexN: N hex characters); "
        "`sign --nonce` fixes it.",
    )
    template: str | None = Field(
        default=None,
        description="A template rendered after before_sign (it sees the request as sent).",
    )
    remove_prefix: str | None = Field(
        default=None,
        description="With template: this text is removed from the start of the result "
        "(e.g. a version prefix the vendor does not sign).",
    )
    digest: DigestName | None = Field(
        default=None, description="With template: hash the result (raw digest bytes)."
    )
    encode: Encoding | None = Field(
        default=None, description="With template: encode the (digested) result."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> VarSpec:
        kinds = [k for k in ("now", "random", "template") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a var is exactly one of {now: ...}, {random: ...}, {template: ...}")
        extras = [k for k in ("remove_prefix", "digest", "encode") if getattr(self, k) is not None]
        if extras and kinds[0] != "template":
            raise ValueError(f"{', '.join(extras)} only go with template")
        return self


class Placements(_Model):
    """Where templates go: query parameters, urlencoded form fields, headers."""

    query: dict[str, str] = Field(
        default_factory=dict,
        description="Query parameters set (replacing the first of the name, in place) or "
        "appended, RFC 3986-encoded.",
    )
    form: dict[str, str] = Field(
        default_factory=dict,
        description="Form fields, likewise, in an urlencoded (or empty) body; any other body "
        "is refused with 415.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers set (every copy the app sent is replaced)."
    )

    @field_validator("query", "form")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        if "" in value:
            raise ValueError("a parameter name must not be empty")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            check_settable_header(name)
        return value


class SignSpec(_Model):
    algorithm: Algorithm = Field(description="hmac-sha1, hmac-sha256, hmac-sha384, hmac-sha512.")
    key: str = Field(
        default="{secret}",
        description="The HMAC key: the only template that may read {secret}.",
    )
    message: str = Field(description="The template of the signed message.")
    encode: Encoding = Field(default="hex", description="How {signature} encodes the MAC.")


class HmacSpec(Protocol):
    """What the plan compiler reads of an `HmacConfig`."""

    @property
    def key_id(self) -> Secret | None: ...
    @property
    def secret(self) -> Secret: ...
    @property
    def vars(self) -> dict[str, VarSpec]: ...
    @property
    def strip(self) -> list[str]: ...
    @property
    def before_sign(self) -> Placements: ...
    @property
    def sign(self) -> SignSpec: ...
    @property
    def after_sign(self) -> Placements: ...
