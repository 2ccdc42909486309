"""The operator's certificate authority: loaded and checked from PEM, or created for development.

The CA key signs a certificate for any host a client trusts it for: it is the crown jewel
(SECURITY.md). It is read from a secret value, held as a `cryptography` key object that has no
printable form, and no message here ever quotes it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

MIN_RSA_BITS: Final = 2048
DEV_CA_DAYS: Final = 365
CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
_DNS_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_ca_certificate(pem: str, now: datetime.datetime | None = None) -> x509.Certificate:
    """The first certificate in `pem`, checked to be a CA that may sign certificates and is
    valid now. Raises ValueError with a readable reason."""
    try:
        certificate = x509.load_pem_x509_certificates(pem.encode())[0]
    except ValueError:
        raise ValueError("is not a PEM certificate") from None
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise ValueError("is not a CA certificate (no basicConstraints CA:TRUE)") from None
    if not constraints.value.ca:
        raise ValueError("is not a CA certificate (basicConstraints CA:FALSE)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass  # no keyUsage: any use is allowed
    else:
        if not usage.key_cert_sign:
            raise ValueError("cannot sign certificates (its keyUsage lacks keyCertSign)")
    now = now or _utcnow()
    if certificate.not_valid_after_utc <= now:
        expired = certificate.not_valid_after_utc.isoformat()
        raise ValueError(f"expired on {expired}; create or rotate the CA")
    if certificate.not_valid_before_utc > now:
        start = certificate.not_valid_before_utc.isoformat()
        raise ValueError(f"is not valid before {start} (check this machine's clock)")
    if not isinstance(certificate.public_key(), ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("must have an EC or RSA key")
    return certificate


def load_ca_key(pem: str, certificate: x509.Certificate | None) -> CAKey:
    """The CA's private key, checked to be usable and to match `certificate` (when given).
    Raises ValueError; the message never quotes the key."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ValueError(
            "is encrypted: give the key unencrypted (keep it in a Secret readable by the "
            "proxy only)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("is not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"is an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS}")
    elif not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("must be an EC or RSA key (leaf certificates are signed with it)")
    if certificate is not None and _public_der(key.public_key()) != _public_der(
        certificate.public_key()
    ):
        raise ValueError("does not match the certificate in ca_cert")
    return key


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A checked CA certificate and its key. `repr` shows the subject and expiry only."""

    certificate: x509.Certificate
    key: CAKey = field(repr=False)

    @classmethod
    def from_pem(
        cls, cert_pem: str, key_pem: str, now: datetime.datetime | None = None
    ) -> CertificateAuthority:
        certificate = load_ca_certificate(cert_pem, now)
        return cls(certificate, load_ca_key(key_pem, certificate))

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.subject}, expires {self.not_after.isoformat()})"

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def hash_algorithm(self) -> hashes.SHA256:
        return hashes.SHA256()

    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The AKI of the certificates it signs: its own SKI, or one computed from its key."""
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    def permits(self, host: str) -> bool:
        """Whether the CA's name constraints (if any) allow a certificate for `host`."""
        try:
            constraints = self.certificate.extensions.get_extension_for_class(
                x509.NameConstraints
            ).value
        except x509.ExtensionNotFound:
            return True
        name = _general_name(host)
        same_kind = [
            subtree
            for subtree in (*(constraints.permitted_subtrees or ()),)
            if type(subtree) is type(name)
        ]
        excluded = [
            subtree
            for subtree in (*(constraints.excluded_subtrees or ()),)
            if type(subtree) is type(name)
        ]
        if any(_within(name, subtree) for subtree in excluded):
            return False
        return not same_kind or any(_within(name, subtree) for subtree in same_kind)


def _general_name(host: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _within(name: x509.GeneralName, subtree: x509.GeneralName) -> bool:
    if isinstance(name, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
        network = subtree.value
        return isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network) and (
            name.value in network
        )
    if isinstance(name, x509.DNSName) and isinstance(subtree, x509.DNSName):
        host, base = name.value.lower(), subtree.value.lower().lstrip(".")
        return host == base or host.endswith("." + base)
    return False


@dataclass(frozen=True, slots=True)
class CreatedCA:
    cert_path: Path
    key_path: Path
    not_after: datetime.datetime


def create_ca(
    directory: Path,
    *,
    force: bool = False,
    permit: list[str] | None = None,
    days: int = DEV_CA_DAYS,
    now: datetime.datetime | None = None,
) -> CreatedCA:
    """Write a new development CA (EC P-256) to `directory`/ca.crt and ca.key (0600).

    `permit` (domains, IP addresses or networks) adds critical name constraints: the CA can
    then sign only for those names, so a stolen key cannot impersonate any other site. Raises
    FileExistsError unless `force`, ValueError for a bad `permit` entry.
    """
    subtrees = _permitted_subtrees(permit or [])
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise FileExistsError(f"{path} exists (use --force to replace it)")
    now = now or _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "signing-proxy"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"signing-proxy development CA {now:%Y-%m-%d %H:%M}"
            ),
        ]
    )
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if subtrees is not None:
        builder = builder.add_extension(subtrees, critical=True)
    certificate = builder.sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_pem)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return CreatedCA(cert_path, key_path, certificate.not_valid_after_utc)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to a file only its owner can read, created so from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file (--force) keeps its mode otherwise
        os.write(fd, data)
    finally:
        os.close(fd)


def _permitted_subtrees(permit: list[str]) -> x509.NameConstraints | None:
    if not permit:
        return None
    dns: list[x509.GeneralName] = []
    networks: list[x509.GeneralName] = []
    for entry in permit:
        text = entry.strip().lower().removeprefix("*.").lstrip(".")
        try:
            networks.append(x509.IPAddress(ipaddress.ip_network(text, strict=False)))
            continue
        except ValueError:
            pass
        labels = text.split(".")
        if not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"--permit {entry!r} is not a domain, IP address or network")
        dns.append(x509.DNSName(text))
    # IP addresses are constrained too: with no permitted network the CA signs for none (a
    # name constraint only restricts the name types it lists).
    excluded: list[x509.GeneralName] | None = None
    if not dns:
        dns.append(x509.DNSName("invalid"))  # RFC 2606's reserved name: no DNS name at all
    if not networks:
        excluded = [
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ]
    return x509.NameConstraints(
        permitted_subtrees=dns + networks or None, excluded_subtrees=excluded
    )
