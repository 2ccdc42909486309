"""A route's client TLS settings (`tls:`) -> what aiohttp takes as `ssl=`, with the client
certificate of mutual TLS (`proxy.upstream_tls` reads and checks the pair).

Built when the config is built (start-up, `check`, every reload), so a file that cannot be used
is a config error naming its key, never a failure of the first request or of a reload.
"""

from __future__ import annotations

import ssl

from proxy.config import InvalidSetting
from proxy.upstream_tls import (
    TlsConfig,
    TlsMaterial,
    add_client_certificate,
    client_context_for,
    material_digest,
)


def client_tls(tls: TlsConfig) -> TlsMaterial:
    """`client_ssl_context(tls)` with the client certificate loaded into it, what the files
    held (their digest, to tell a rotation) and the certificate's expiry."""
    trust = client_ssl_context(tls)
    if tls.client_cert is None:
        return TlsMaterial(ssl=trust, digest=material_digest(tls))
    try:
        return add_client_certificate(client_context_for(trust), tls)
    except ValueError as err:
        raise InvalidSetting(("client_cert",), str(err)) from None


def client_ssl_context(tls: TlsConfig) -> ssl.SSLContext | bool:
    """False: no verification; True: the system's trust store; else a context that trusts
    `tls.ca_file`. Raises `InvalidSetting` (key relative to `tls`) for an unusable file."""
    if not tls.verify:
        return False
    if tls.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=tls.ca_file)
    except ssl.SSLError as err:  # readable, but not certificates in PEM
        reason = err.reason or type(err).__name__
        message = f"{tls.ca_file} is not a PEM bundle of CA certificates ({reason})"
        raise InvalidSetting(("ca_file",), message) from None
    except OSError as err:  # gone or unreadable since the config was validated
        raise InvalidSetting(
            ("ca_file",), f"{tls.ca_file} cannot be read: {err.strerror}"
        ) from None
