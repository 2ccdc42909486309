"""The `signer:` block of `scheme: hmac`: four phases (vars, strip/before_sign, sign, after_sign).

Validation compiles the whole plan, so every template problem is a config error with its key
path (`after_sign.headers.Authorization`), found at load, never at request time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from proxy.secrets import SecretValue
from proxy.signers.base import SignerConfig
from proxy.signers.hmac.functions import Algorithm, DigestName, Encoding, NowFormat, RandomKind

# `key_path` in an error's context: the config loader appends it to the error's location.
KEY_PATH_CTX: Final = "key_path"
_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the proxy manages itself (framing, routing): a scheme may not set them.
_MANAGED_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"}
)


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
            check_header_name(name)
        return value


def check_header_name(name: str) -> None:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower() in _MANAGED_HEADERS:
        raise ValueError(f"{name} is managed by the proxy and cannot be set by a scheme")


class SignSpec(_Model):
    algorithm: Algorithm = Field(description="hmac-sha1, hmac-sha256, hmac-sha384, hmac-sha512.")
    key: str = Field(
        default="{secret}",
        description="The HMAC key: the only template that may read {secret}.",
    )
    message: str = Field(description="The template of the signed message.")
    encode: Encoding = Field(default="hex", description="How {signature} encodes the MAC.")


class HmacConfig(SignerConfig):
    """A route's `signer:` block for `scheme: hmac` (any HMAC API, declared in YAML)."""

    # A validation error must not echo the block: it holds the secret.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    scheme: Literal["hmac"]
    key_id: SecretValue | None = Field(
        default=None, description="An identifier sent in clear: {key_id} in templates."
    )
    secret: SecretValue = Field(description="The HMAC secret, usable only in sign.key.")
    vars: dict[str, VarSpec] = Field(
        default_factory=dict,
        description="Named values per request, in order: now and random first, then "
        "templates (after before_sign).",
    )
    strip: list[str] = Field(
        default_factory=list,
        description="Headers (any case) and query parameters (exact decoded name) the app sent "
        "that are removed first.",
    )
    before_sign: Placements = Field(
        default_factory=Placements, description="Changes made before signing, so signed."
    )
    sign: SignSpec = Field(description="The MAC: algorithm, key, message, encoding.")
    after_sign: Placements = Field(
        default_factory=Placements,
        description="Where the signature goes; the only place {signature} may appear.",
    )

    @field_validator("strip")
    @classmethod
    def _strip_names(cls, value: list[str]) -> list[str]:
        if any(not name for name in value):
            raise ValueError("strip names must not be empty")
        return value

    @model_validator(mode="after")
    def _compiles(self) -> HmacConfig:
        from proxy.signers.hmac.plan import PlanError, build_plan

        try:
            build_plan(self)
        except PlanError as err:
            raise PydanticCustomError(
                "hmac_template", err.message, {KEY_PATH_CTX: list(err.path)}
            ) from None
        return self
