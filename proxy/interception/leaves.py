"""Leaf certificates for intercepted hosts, and the one TLS server context per host.

Each host gets its own EC P-256 key and a short-lived certificate signed by the operator's CA
(SAN = the host, or an IP SAN for an IP; CA:FALSE; serverAuth; AKI = the CA's SKI), valid for
`leaf_validity_days` but never past the CA's own expiry. Exact hosts are minted when the store
is built (start-up, reload); a wildcard route's hosts when first asked for, into a bounded LRU
cache. A leaf is replaced once half its life has passed, when its host is next asked for.

`ssl` loads a certificate and key from files only: they go to an anonymous in-memory file
(`memfd_create`) that is read and closed at once, so a leaf key never touches a disk (where
`memfd_create` is missing, a private temporary file that is removed at once).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.interception.ca import CertificateAuthority

ALPN: Final = ("http/1.1",)
BACKDATE: Final = datetime.timedelta(minutes=5)  # clients whose clock runs a little behind
_MAX_CN: Final = 64  # X.520's upper bound for a commonName

OnMint = Callable[[str, float], None]  # (host, not_after as Unix seconds)


def normalize_host(host: str) -> str:
    """The form leaves are keyed by: lower case, no trailing dot, no IPv6 brackets."""
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class MintedLeaf:
    """A leaf's PEM certificate and key. `repr` never shows the key."""

    host: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    not_before: float  # Unix seconds
    not_after: float


def mint_leaf(
    ca: CertificateAuthority, host: str, validity_days: int, now: float | None = None
) -> MintedLeaf:
    """A fresh key and a certificate for `host` (a DNS name or an IP address), signed by `ca`."""
    host = normalize_host(host)
    moment = datetime.datetime.fromtimestamp(now if now is not None else time.time(), datetime.UTC)
    not_after = min(moment + datetime.timedelta(days=validity_days), ca.not_after)
    key = ec.generate_private_key(ec.SECP256R1())
    address = _ip(host)
    san: x509.GeneralName = x509.IPAddress(address) if address else x509.DNSName(host)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, host)] if len(host) <= _MAX_CN else []
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(moment - BACKDATE, ca.certificate.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(ca.authority_key_identifier(), critical=False)
        .sign(ca.key, ca.hash_algorithm)
    )
    return MintedLeaf(
        host=host,
        cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        not_before=moment.timestamp(),
        not_after=not_after.timestamp(),
    )


# The server-side reason of a handshake that `server_context`'s SNI check refused.
SNI_REFUSED_REASON: Final = "CALLBACK_FAILED"


def server_context(leaf: MintedLeaf) -> ssl.SSLContext:
    """A TLS server context presenting `leaf`: TLS 1.2+, ALPN `http/1.1` only, and a
    handshake whose SNI names another host is refused (no SNI at all is allowed: clients send
    none for an IP address)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN))
    _load_chain(context, leaf.cert_pem + leaf.key_pem)
    host = leaf.host

    def check_sni(_: object, server_name: str | None, __: ssl.SSLContext) -> int | None:
        if server_name is None or normalize_host(server_name) == host:
            return None
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    context.sni_callback = check_sni
    return context


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("signing-proxy-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="signing-proxy-leaf-") as directory:  # 0700
        path = os.path.join(directory, "leaf.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)
        context.load_cert_chain(path)


@dataclass(frozen=True, slots=True)
class _Entry:
    context: ssl.SSLContext
    not_after: float
    renew_at: float  # half-way through the leaf's life


class LeafStore:
    """One TLS server context per intercepted host, minted from the CA and renewed at half
    life. `exact_hosts` are minted now; any other host is minted on first use into an LRU
    cache of `max_cached` entries (wildcard routes)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        validity_days: int,
        exact_hosts: Iterable[str] = (),
        max_cached: int = 1000,
        on_mint: OnMint | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca = ca
        self.validity_days = validity_days
        self.max_cached = max_cached
        self._on_mint = on_mint
        self._clock = clock
        self._pinned: dict[str, _Entry] = {}
        self._cached: OrderedDict[str, _Entry] = OrderedDict()
        for host in {normalize_host(host) for host in exact_hosts}:
            self._pinned[host] = self._mint(host)

    def __repr__(self) -> str:
        return (
            f"LeafStore({self.ca!r}, {len(self._pinned)} exact host(s), {len(self._cached)} cached)"
        )

    def context_for(self, host: str) -> ssl.SSLContext:
        """The server context for `host`, minting or renewing its leaf when needed."""
        host = normalize_host(host)
        now = self._clock()
        entry = self._pinned.get(host)
        if entry is not None:
            if now >= entry.renew_at:
                entry = self._pinned[host] = self._mint(host)
            return entry.context
        entry = self._cached.get(host)
        if entry is not None and now < entry.renew_at:
            self._cached.move_to_end(host)
            return entry.context
        entry = self._cached[host] = self._mint(host)
        self._cached.move_to_end(host)
        while len(self._cached) > self.max_cached:
            self._cached.popitem(last=False)
        return entry.context

    def not_after(self, host: str) -> float | None:
        """The expiry of the leaf `host` has now (Unix seconds), or None when it has none."""
        host = normalize_host(host)
        entry = self._pinned.get(host) or self._cached.get(host)
        return entry.not_after if entry is not None else None

    @property
    def cached_hosts(self) -> int:
        return len(self._cached)

    def _mint(self, host: str) -> _Entry:
        now = self._clock()
        leaf = mint_leaf(self.ca, host, self.validity_days, now)
        if self._on_mint is not None:
            self._on_mint(host, leaf.not_after)
        return _Entry(
            context=server_context(leaf),
            not_after=leaf.not_after,
            renew_at=now + (leaf.not_after - now) / 2,
        )
