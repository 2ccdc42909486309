"""A route's client TLS settings (`tls:`) -> what aiohttp takes as `ssl=`.

Built when the config is built (start-up, `check`, every reload), so a file that cannot be used
is a config error naming its key, never a failure of the first request or of a reload.
"""

from __future__ import annotations

import ssl

from proxy.config import InvalidSetting, TlsConfig


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
