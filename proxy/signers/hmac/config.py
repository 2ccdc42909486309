"""The `signer:` block of `scheme: hmac`: four phases (vars, strip/before_sign, sign, after_sign).

Validation compiles the whole plan, so every template problem is a config error with its key
path (`after_sign.headers.Authorization`), found at load, never at request time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from proxy.secrets import HeaderSecretValue, SecretValue
from proxy.signers.base import KEY_PATH_CTX, SignerConfig
from proxy.signers.hmac.plan import PlanError, build_plan
from proxy.signers.hmac.spec import Placements, SignSpec, VarSpec


class HmacConfig(SignerConfig):
    """A route's `signer:` block for `scheme: hmac` (any HMAC API, declared in YAML)."""

    # A validation error must not echo the block: it holds the secret.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    scheme: Literal["hmac"]
    # Header-safe whatever the templates do with it: an identifier never holds a line break.
    key_id: HeaderSecretValue | None = Field(
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
        try:
            build_plan(self)
        except PlanError as err:
            raise PydanticCustomError(
                "hmac_template", err.message, {KEY_PATH_CTX: list(err.path)}
            ) from None
        return self
