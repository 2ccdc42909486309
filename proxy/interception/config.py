"""The config of CONNECT tunnels (`tunnels:`) and of HTTPS interception (`interception:`).

The CA is checked when the config is loaded (start-up, reload, `check`): a CA certificate that
may sign and is valid now, and a key that matches it. Each problem names its key.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from proxy.secrets import Secret, SecretValue

DEFAULT_LEAF_VALIDITY_DAYS: Final = 7
MAX_LEAF_VALIDITY_DAYS: Final = 30


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TunnelsConfig(_Model):
    """Bounds of CONNECT tunnels (plain `CONNECT host:80` and intercepted ones alike)."""

    max_open: int = Field(
        default=256, ge=1, le=100_000, description="Tunnels open at once; 503 above."
    )
    handshake_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds an intercepted tunnel's client has for its TLS handshake.",
    )
    idle_timeout: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds a tunnel may stay idle between requests before it is closed.",
    )


class InterceptionConfig(_Model):
    """The operator's CA, for routes with `intercept: true`."""

    ca_cert: SecretValue = Field(
        description="The CA certificate (PEM), a secret value: e.g. "
        "{file: /etc/signing-proxy/ca/ca.crt}."
    )
    ca_key: SecretValue = Field(
        description="The CA's private key (PEM, unencrypted, EC or RSA), a secret value: e.g. "
        "{file: /etc/signing-proxy/ca/ca.key}."
    )
    leaf_validity_days: int = Field(
        default=DEFAULT_LEAF_VALIDITY_DAYS,
        ge=1,
        le=MAX_LEAF_VALIDITY_DAYS,
        description="Days a minted host certificate is valid (never past the CA's expiry); "
        "renewed at half life.",
    )
    max_cached_leaves: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Host certificates kept for wildcard routes (least recently used go).",
    )

    @field_validator("ca_cert")
    @classmethod
    def _a_ca(cls, value: Secret) -> Secret:
        # Here, not at the top: only a config with `interception` needs cryptography (~7 MiB of
        # a sidecar's memory: bench/footprint.py).
        from proxy.interception.ca import load_ca_certificate

        try:
            load_ca_certificate(value.reveal())
        except ValueError as err:
            raise ValueError(f"the CA certificate {err}") from None
        return value

    @field_validator("ca_key")
    @classmethod
    def _matching_key(cls, value: Secret, info: ValidationInfo) -> Secret:
        from proxy.interception.ca import load_ca_certificate, load_ca_key

        cert = info.data.get("ca_cert")
        certificate = load_ca_certificate(cert.reveal()) if isinstance(cert, Secret) else None
        try:
            load_ca_key(value.reveal(), certificate)
        except ValueError as err:
            raise ValueError(f"the CA key {err}") from None
        return value
