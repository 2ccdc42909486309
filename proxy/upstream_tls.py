"""TLS towards an upstream (or a token endpoint): trust, and the client certificate of mutual TLS.

The client certificate and key are files, typically a Kubernetes Secret written by cert-manager
and rotated by an atomic symlink swap. They are read whole, checked (the key must match the
certificate) and turned into an `ssl.SSLContext` once per load; `TlsMaterial.digest` tells a
reload whether the files changed, so only a route whose pair rotated gets a new context (and
with it new connections: aiohttp pools connections per context, so none made with the old
certificate is reused).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from proxy.secrets import SecretValue

_READ_ATTEMPTS: Final = 3  # a symlink swap between reading the cert and the key: read again


class TlsConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    verify: bool = Field(default=True, description="Verify the server's certificate.")
    ca_file: str | None = Field(
        default=None, description="PEM bundle to trust instead of the system store."
    )
    client_cert: str | None = Field(
        default=None,
        description="PEM client certificate (chain) for mutual TLS; needs client_key.",
    )
    client_key: str | None = Field(
        default=None, description="PEM private key of client_cert (may be encrypted)."
    )
    key_password: SecretValue | None = Field(
        default=None, description="Password of an encrypted client_key (a secret value)."
    )

    @field_validator("ca_file", "client_cert", "client_key")
    @classmethod
    def _readable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not Path(value).is_file():
            what = "CA file" if info.field_name == "ca_file" else f"{info.field_name}"
            raise ValueError(f"{what} {value} does not exist")
        return value

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together: set both or neither")
        if self.key_password is not None and self.client_key is None:
            raise ValueError("key_password needs client_key")
        if self.client_cert is not None:
            load_material(self)  # the key must match the certificate: a config error, not a 502
        return self


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """What a `TlsConfig` resolved to: the context, what its files held, and the cert's expiry."""

    ssl: ssl.SSLContext | bool
    digest: str  # of the CA, certificate and key files' bytes ("" without any)
    client_cert_expiry: float | None = None  # Unix seconds


def load_material(tls: TlsConfig) -> TlsMaterial:
    """Build the client context. Raises ValueError (never quoting a key or password)."""
    trust = _trust_context(tls, force_context=tls.client_cert is not None)
    if not isinstance(trust, ssl.SSLContext):
        return TlsMaterial(ssl=trust, digest=material_digest(tls))
    return add_client_certificate(trust, tls)


def add_client_certificate(context: ssl.SSLContext, tls: TlsConfig) -> TlsMaterial:
    """Load `tls`'s client certificate and key (if any) into `context`, checked first (the key
    must match the certificate). Raises ValueError (never quoting a key or password)."""
    if tls.client_cert is None or tls.client_key is None:
        return TlsMaterial(ssl=context, digest=material_digest(tls))
    password = tls.key_password.reveal() if tls.key_password is not None else None
    for _ in range(_READ_ATTEMPTS):
        cert_pem, key_pem = _read_pair(tls.client_cert, tls.client_key)
        expiry = _check_pair(tls, cert_pem, key_pem)
        try:
            # From the files themselves: `ssl` takes no bytes, and a decrypted copy of the key
            # must not be written anywhere.
            context.load_cert_chain(tls.client_cert, tls.client_key, password)
        except ssl.SSLError:
            pass  # the files changed under us (checked below) or OpenSSL disagrees
        else:
            if _read_pair(tls.client_cert, tls.client_key) == (cert_pem, key_pem):
                digest = _digest(tls, cert_pem, key_pem)
                return TlsMaterial(ssl=context, digest=digest, client_cert_expiry=expiry)
        if _read_pair(tls.client_cert, tls.client_key) == (cert_pem, key_pem):
            raise ValueError(f"client_cert {tls.client_cert} and client_key cannot be loaded")
    raise ValueError(f"{tls.client_cert} keeps changing while it is read")


def client_context_for(trust: ssl.SSLContext | bool) -> ssl.SSLContext:
    """A context to load a client certificate into, from aiohttp's `ssl=` trust setting."""
    if isinstance(trust, ssl.SSLContext):
        return trust
    if trust:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _check_pair(tls: TlsConfig, cert_pem: bytes, key_pem: bytes) -> float:
    """The certificate's expiry, once the key is known to match it (clear errors first)."""
    # Imported here: only a route with a client certificate needs cryptography (its import
    # is ~7 MiB of a sidecar's memory: bench/footprint.py).
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    password = tls.key_password.reveal().encode() if tls.key_password is not None else None
    try:
        certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise ValueError(f"client_cert {tls.client_cert} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except TypeError:  # encrypted without a password, or a password for a plain key
        hint = "is encrypted: set key_password" if password is None else "is not encrypted"
        raise ValueError(f"client_key {tls.client_key} {hint}") from None
    except ValueError:
        raise ValueError(
            f"client_key {tls.client_key} cannot be read: not a PEM private key, or a wrong "
            "key_password"
        ) from None
    if _public_bytes(key.public_key()) != _public_bytes(certificate.public_key()):
        raise ValueError(
            f"client_key {tls.client_key} does not match the certificate in {tls.client_cert}"
        )
    return certificate.not_valid_after_utc.timestamp()


def _digest(tls: TlsConfig, cert_pem: bytes = b"", key_pem: bytes = b"") -> str:
    if not tls_files(tls):
        return ""
    digest = hashlib.sha256(cert_pem + b"\0" + key_pem + b"\0")
    if tls.ca_file:
        try:
            digest.update(Path(tls.ca_file).read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return digest.hexdigest()


def material_digest(tls: TlsConfig) -> str:
    """The digest `load_material` would give now, without building a context."""
    if tls.client_cert is None or tls.client_key is None:
        return _digest(tls)
    return _digest(tls, *_read_pair(tls.client_cert, tls.client_key))


def tls_files(tls: TlsConfig) -> list[str]:
    """The files a reload watches."""
    return [path for path in (tls.ca_file, tls.client_cert, tls.client_key) if path]


def _trust_context(tls: TlsConfig, *, force_context: bool = False) -> ssl.SSLContext | bool:
    if tls.verify and tls.ca_file:
        return ssl.create_default_context(cafile=tls.ca_file)
    trust = tls.verify
    return client_context_for(trust) if force_context else trust


def _read_pair(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    for _ in range(_READ_ATTEMPTS):
        try:
            cert_pem = Path(cert_path).read_bytes()
            key_pem = Path(key_path).read_bytes()
            if Path(cert_path).read_bytes() == cert_pem:
                return cert_pem, key_pem
        except OSError as exc:
            raise ValueError(f"cannot read {exc.filename}: {exc.strerror}") from None
    raise ValueError(f"{cert_path} keeps changing while it is read")


def _public_bytes(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
