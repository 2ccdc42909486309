"""Who may use the proxy: allowed client networks and/or a proxy token.

For shared (non-sidecar) deployments. A sidecar listens on 127.0.0.1 and needs none of it. The
token is checked in constant time; the client's `Proxy-Authorization` is hop-by-hop and never
forwarded (see `proxy.http.strip_hop_by_hop`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Final

from proxy.config import AccessConfig
from proxy.errors import ProxyError

PROXY_AUTHENTICATE: Final = 'Bearer realm="signing-proxy", Basic realm="signing-proxy"'

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    networks: tuple[IPNetwork, ...]
    token: bytes | None

    @classmethod
    def from_config(cls, config: AccessConfig | None) -> AccessPolicy | None:
        if config is None:
            return None
        token = config.proxy_token.reveal().encode() if config.proxy_token else None
        return cls(tuple(config.allow_networks), token)

    def check(self, remote: str | None, proxy_authorization: str | None) -> None:
        """Raise 403 for a client outside the networks, 407 for a missing or wrong token."""
        if self.networks and not _in_networks(remote, self.networks):
            raise ProxyError(403, "client_not_allowed", "this client may not use the proxy")
        if self.token is not None and not self._token_ok(proxy_authorization):
            raise ProxyError(
                407,
                "proxy_auth_required",
                "the proxy needs Proxy-Authorization: Bearer <token> "
                "(or Basic with the token as password)",
                headers={"Proxy-Authenticate": PROXY_AUTHENTICATE},
            )

    def _token_ok(self, header: str | None) -> bool:
        assert self.token is not None
        if not header:
            return False
        kind, _, credentials = header.strip().partition(" ")
        kind = kind.lower()
        if kind == "bearer":
            offered = credentials.strip().encode()
        elif kind == "basic":  # HTTP_PROXY=http://user:TOKEN@proxy:8080 sends this
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            offered = decoded.partition(b":")[2]
        else:
            return False
        return hmac.compare_digest(offered, self.token)


def _in_networks(remote: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
