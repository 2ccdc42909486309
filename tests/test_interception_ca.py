"""The interception CA and its leaves: `ca create`, the checks at load, minting, TLS contexts."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from proxy.config import ConfigError, parse_config
from proxy.interception.ca import CertificateAuthority, create_ca, load_ca_certificate, load_ca_key
from proxy.interception.leaves import ALPN, LeafStore, mint_leaf, server_context

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca")
    create_ca(directory)
    return directory


@pytest.fixture(scope="module")
def ca(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.from_pem(
        (ca_dir / "ca.crt").read_text(), (ca_dir / "ca.key").read_text()
    )


def _self_signed(
    key: Any,
    *,
    ca: bool | None = True,
    cert_sign: bool = True,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=30))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    builder = builder.add_extension(
        x509.KeyUsage(True, False, False, False, False, cert_sign, False, False, False), True
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: Any, password: bytes | None = None) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


# --- ca create ------------------------------------------------------------------------------


def test_create_ca_writes_an_ec_ca_and_a_private_key(tmp_path: Path) -> None:
    created = create_ca(tmp_path / "new")
    assert stat.S_IMODE(created.key_path.stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(created.cert_path.read_bytes())
    key = serialization.load_pem_private_key(created.key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert certificate.not_valid_after_utc > NOW + datetime.timedelta(days=300)


def test_create_ca_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = create_ca(tmp_path)
    first.key_path.chmod(0o644)
    before = first.key_path.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        create_ca(tmp_path)
    assert first.key_path.read_bytes() == before
    again = create_ca(tmp_path, force=True)
    assert again.key_path.read_bytes() != before
    assert stat.S_IMODE(again.key_path.stat().st_mode) == 0o600


def test_permit_adds_critical_name_constraints(tmp_path: Path) -> None:
    created = create_ca(tmp_path, permit=["example.com", "*.vendor.test", "10.1.0.0/16"])
    certificate = x509.load_pem_x509_certificate(created.cert_path.read_bytes())
    extension = certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    assert set(extension.value.permitted_subtrees or ()) == {
        x509.DNSName("example.com"),
        x509.DNSName("vendor.test"),
        x509.IPAddress(ipaddress.ip_network("10.1.0.0/16")),
    }
    ca = CertificateAuthority.from_pem(created.cert_path.read_text(), created.key_path.read_text())
    assert ca.permits("example.com")
    assert ca.permits("api.example.com")
    assert not ca.permits("example.com.evil.test")
    assert not ca.permits("badexample.com")
    assert ca.permits("10.1.2.3")
    assert not ca.permits("10.2.0.1")


def test_permit_of_domains_only_excludes_every_ip(tmp_path: Path) -> None:
    created = create_ca(tmp_path, permit=["example.com"])
    ca = CertificateAuthority.from_pem(created.cert_path.read_text(), created.key_path.read_text())
    assert not ca.permits("127.0.0.1")
    assert not ca.permits("::1")
    assert not ca.permits("other.test")


def test_permit_refuses_what_is_not_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a domain"):
        create_ca(tmp_path, permit=["exa mple.com"])
    assert not (tmp_path / "ca.key").exists()


def test_a_constrained_ca_is_enforced_by_a_verifier(tmp_path: Path) -> None:
    created = create_ca(tmp_path, permit=["example.com"])
    ca = CertificateAuthority.from_pem(created.cert_path.read_text(), created.key_path.read_text())
    store = Store([ca.certificate])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("a.example.com"))
    verifier.verify(_cert(mint_leaf(ca, "a.example.com", 7).cert_pem), [])
    outside = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("evil.test"))
    with pytest.raises(VerificationError):
        outside.verify(_cert(mint_leaf(ca, "evil.test", 7).cert_pem), [])


# --- checks at load -------------------------------------------------------------------------


def test_a_leaf_certificate_is_not_a_ca() -> None:
    leaf = trustme.CA().issue_cert("host.test").cert_chain_pems[0].bytes().decode()
    with pytest.raises(ValueError, match="not a CA certificate"):
        load_ca_certificate(leaf)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ca": None}, "no basicConstraints"),
        ({"ca": False}, "CA:FALSE"),
        ({"cert_sign": False}, "keyCertSign"),
        ({"not_after": NOW - datetime.timedelta(days=1)}, "expired on"),
        ({"not_before": NOW + datetime.timedelta(days=1)}, "not valid before"),
    ],
)
def test_ca_certificate_checks(kwargs: dict[str, Any], message: str) -> None:
    pem = _self_signed(ec.generate_private_key(ec.SECP256R1()), **kwargs)
    with pytest.raises(ValueError, match=message):
        load_ca_certificate(pem)


def test_not_pem_and_ed25519_are_refused() -> None:
    with pytest.raises(ValueError, match="not a PEM certificate"):
        load_ca_certificate("hello")
    with pytest.raises(ValueError, match="EC or RSA"):
        load_ca_certificate(_self_signed(ed25519.Ed25519PrivateKey.generate()))


def test_ca_key_checks() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = load_ca_certificate(_self_signed(key))
    assert load_ca_key(_key_pem(key), certificate).public_key() == key.public_key()
    other = _key_pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError, match="does not match"):
        load_ca_key(other, certificate)
    with pytest.raises(ValueError, match="encrypted"):
        load_ca_key(_key_pem(key, b"pw"), certificate)
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_ca_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", certificate)
    with pytest.raises(ValueError, match="EC or RSA"):
        load_ca_key(_key_pem(ed25519.Ed25519PrivateKey.generate()), None)
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(ValueError, match="1024 bits"):
        load_ca_key(_key_pem(small), None)


def test_an_rsa_ca_signs_leaves() -> None:
    key = rsa.generate_private_key(65537, 2048)
    ca = CertificateAuthority.from_pem(_self_signed(key), _key_pem(key))
    leaf = _cert(mint_leaf(ca, "rsa.test", 7).cert_pem)
    leaf.verify_directly_issued_by(ca.certificate)


def test_repr_of_the_ca_and_the_store_never_shows_the_key(ca: CertificateAuthority) -> None:
    key_lines = [line for line in _key_pem(ca.key).splitlines() if "-----" not in line]
    store = LeafStore(ca, validity_days=7, exact_hosts=["a.test"])
    for text in (repr(ca), str(ca), repr(store), repr(mint_leaf(ca, "a.test", 7))):
        assert "signing-proxy" in text or "LeafStore" in text or "MintedLeaf" in text
        for line in key_lines:
            assert line not in text


# --- the config -----------------------------------------------------------------------------


def _config(ca_dir: Path, routes: list[dict[str, Any]], **interception: Any) -> str:
    doc: dict[str, Any] = {"routes": routes}
    doc["interception"] = {
        "ca_cert": {"file": str(ca_dir / "ca.crt")},
        "ca_key": {"file": str(ca_dir / "ca.key")},
        **interception,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _route(host: str | None = "api.example.com", **extra: Any) -> dict[str, Any]:
    match = {"host": host} if host else {"path_prefix": "/x"}
    return {
        "name": "r",
        "match": match,
        "upstream": "https://api.example.com",
        "signer": {"scheme": "bearer", "token": "t"},
        **extra,
    }


def _problems(text: str) -> list[tuple[str, int, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [(p.path, p.line, p.message) for p in info.value.problems]


def test_interception_defaults(ca_dir: Path) -> None:
    config = parse_config(_config(ca_dir, [_route(intercept=True)]))
    assert config.interception is not None
    assert config.interception.leaf_validity_days == 7
    assert config.routes[0].intercept
    assert config.tunnels.max_open > 0
    assert not parse_config(_config(ca_dir, [_route()])).routes[0].intercept


@pytest.mark.parametrize("days", [0, 31, "x"])
def test_leaf_validity_is_bounded(ca_dir: Path, days: object) -> None:
    problems = _problems(_config(ca_dir, [_route()], leaf_validity_days=days))
    assert [path for path, _, _ in problems] == ["interception.leaf_validity_days"]


def test_intercept_needs_a_host_and_the_ca(ca_dir: Path) -> None:
    text = yaml.safe_dump(
        {
            "routes": [
                _route(None, intercept=True),
                {**_route(intercept=True), "name": "s"},
                {**_route(), "name": "t", "upstream": 5},  # reported together with them
            ]
        },
        sort_keys=False,
    )
    problems = _problems(text)
    by_path = {path: message for path, _, message in problems}
    assert "match.host" in by_path["routes[0].intercept"]
    assert "interception section" in by_path["routes[1].intercept"]
    assert "routes[2].upstream" in by_path
    lines = text.splitlines()
    for path, line, _ in problems:
        if path.endswith("intercept"):
            assert lines[line - 1].strip().startswith("intercept:")


def test_a_wildcard_or_ip_route_may_intercept(ca_dir: Path) -> None:
    config = parse_config(
        _config(
            ca_dir,
            [
                {**_route("*.example.com", intercept=True), "upstream": "https://x.example"},
                {**_route("127.0.0.1:8443", intercept=True), "name": "ip"},
            ],
        )
    )
    assert [route.intercept for route in config.routes] == [True, True]


def test_a_host_outside_the_name_constraints_is_refused(tmp_path: Path) -> None:
    create_ca(tmp_path, permit=["example.com"])
    ok = {**_route("api.example.com", intercept=True), "name": "ok"}
    bad = {**_route("api.vendor.test", intercept=True), "name": "bad"}
    problems = _problems(_config(tmp_path, [ok, bad]))
    assert [(path, message) for path, _, message in problems] == [
        (
            "routes[1].match.host",
            "api.vendor.test is outside the name constraints of interception.ca_cert",
        )
    ]


def test_ca_problems_name_the_key_and_never_quote_it(tmp_path: Path, ca_dir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "expired.crt").write_text(
        _self_signed(key, not_after=NOW - datetime.timedelta(hours=1))
    )
    (tmp_path / "ca.key").write_text(_key_pem(key))
    doc = {
        "interception": {
            "ca_cert": {"file": str(tmp_path / "expired.crt")},
            "ca_key": {"file": str(tmp_path / "ca.key")},
        },
        "routes": [_route()],
    }
    problems = _problems(yaml.safe_dump(doc, sort_keys=False))
    assert [(p, m.split(" on ")[0]) for p, _, m in problems] == [
        ("interception.ca_cert", "the CA certificate expired")
    ]
    # A key that does not match, given literally: the message never quotes it.
    other = _key_pem(ec.generate_private_key(ec.SECP256R1()))
    doc["interception"] = {
        "ca_cert": {"file": str(ca_dir / "ca.crt")},
        "ca_key": other,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(doc, sort_keys=False))
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("interception.ca_key", "the CA key does not match the certificate in ca_cert")
    ]
    for line in other.splitlines()[1:-1]:
        assert line not in str(info.value)


# --- leaves ---------------------------------------------------------------------------------


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_a_leaf_for_a_host(ca: CertificateAuthority) -> None:
    minted = mint_leaf(ca, "API.Example.com.", 7)
    leaf = _cert(minted.cert_pem)
    assert minted.host == "api.example.com"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("api.example.com")]
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    lifetime = leaf.not_valid_after_utc - NOW
    assert datetime.timedelta(days=6, hours=23) < lifetime <= datetime.timedelta(days=7, hours=1)
    # A verifier that applies the web PKI's rules (SAN, EKU, AKI, CA:FALSE) accepts it.
    verifier = (
        PolicyBuilder()
        .store(Store([ca.certificate]))
        .build_server_verifier(x509.DNSName("api.example.com"))
    )
    verifier.verify(leaf, [])
    # Each leaf has its own key.
    assert mint_leaf(ca, "api.example.com", 7).key_pem != minted.key_pem


def test_an_ip_gets_an_ip_san(ca: CertificateAuthority) -> None:
    for host, address in (("127.0.0.1", "127.0.0.1"), ("[::1]", "::1")):
        leaf = _cert(mint_leaf(ca, host, 7).cert_pem)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert list(san) == [x509.IPAddress(ipaddress.ip_address(address))]


def test_a_leaf_never_outlives_its_ca(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_end = NOW + datetime.timedelta(days=2)
    ca = CertificateAuthority.from_pem(_self_signed(key, not_after=ca_end), _key_pem(key))
    leaf = _cert(mint_leaf(ca, "a.test", 30).cert_pem)
    assert leaf.not_valid_after_utc == ca_end.replace(microsecond=0)
    # Backdated a little for clients whose clock runs behind, never before the CA itself.
    assert leaf.not_valid_before_utc >= ca.certificate.not_valid_before_utc


def test_store_mints_exact_hosts_at_once_and_renews_at_half_life(
    ca: CertificateAuthority,
) -> None:
    minted: list[tuple[str, float]] = []
    now = [NOW.timestamp()]
    store = LeafStore(
        ca,
        validity_days=2,
        exact_hosts=["a.test", "A.test", "b.test"],
        on_mint=lambda host, end: minted.append((host, end)),
        clock=lambda: now[0],
    )
    assert sorted(host for host, _ in minted) == ["a.test", "b.test"]
    context = store.context_for("a.test")
    assert store.context_for("A.TEST") is context  # one context per host, cached
    assert len(minted) == 2
    end = store.not_after("a.test")
    assert end is not None
    now[0] += 0.9 * 86400  # not yet half of two days
    assert store.context_for("a.test") is context
    now[0] += 0.2 * 86400
    renewed = store.context_for("a.test")
    assert renewed is not context
    assert [host for host, _ in minted[2:]] == ["a.test"]
    assert store.not_after("a.test") > end  # type: ignore[operator]


def test_store_mints_other_hosts_on_demand_into_a_bounded_cache(
    ca: CertificateAuthority,
) -> None:
    minted: list[str] = []
    store = LeafStore(
        ca, validity_days=7, max_cached=2, on_mint=lambda host, _: minted.append(host)
    )
    assert minted == []
    one = store.context_for("one.example.com")
    store.context_for("two.example.com")
    assert store.context_for("one.example.com") is one  # recently used: kept
    store.context_for("three.example.com")  # evicts two
    assert store.cached_hosts == 2
    assert store.not_after("two.example.com") is None
    assert store.context_for("one.example.com") is one
    store.context_for("two.example.com")
    assert minted == ["one.example.com", "two.example.com", "three.example.com", "two.example.com"]


# --- the TLS server context, in real handshakes ---------------------------------------------


async def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str | None
) -> tuple[str | None, str | None]:
    """(client's negotiated ALPN or None, server-side error reason or None)."""
    outcome: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(server)
        except ssl.SSLError as err:
            outcome.set_result(err.reason)
        except (ConnectionError, OSError) as err:
            outcome.set_result(type(err).__name__)
        else:
            outcome.set_result(None)
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    alpn: str | None = None
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await writer.start_tls(client, server_hostname=server_hostname)
            ssl_object = writer.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol()
        except (ssl.SSLError, ConnectionError):
            alpn = "failed"
        writer.close()
        return alpn, await asyncio.wait_for(outcome, 10)
    finally:
        listener.close()


def _client(ca: CertificateAuthority | None, *, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        context.load_verify_locations(
            cadata=ca.certificate.public_bytes(serialization.Encoding.PEM).decode()
        )
    context.check_hostname = check_hostname
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def test_a_client_that_trusts_the_ca_gets_http11(ca: CertificateAuthority) -> None:
    server = server_context(mint_leaf(ca, "api.example.com", 7))
    alpn, error = await _handshake(server, _client(ca), "api.example.com")
    assert (alpn, error) == ("http/1.1", None)
    assert ALPN == ("http/1.1",)


async def test_an_sni_naming_another_host_fails_the_handshake(ca: CertificateAuthority) -> None:
    server = server_context(mint_leaf(ca, "api.example.com", 7))
    client = _client(ca, check_hostname=False)
    alpn, error = await _handshake(server, client, "other.example.com")
    assert alpn == "failed"
    assert error == "CALLBACK_FAILED"


async def test_no_sni_is_allowed(ca: CertificateAuthority) -> None:
    server = server_context(mint_leaf(ca, "127.0.0.1", 7))
    alpn, error = await _handshake(server, _client(ca, check_hostname=False), None)
    assert (alpn, error) == ("http/1.1", None)


async def test_a_client_without_the_ca_refuses_the_leaf(ca: CertificateAuthority) -> None:
    server = server_context(mint_leaf(ca, "api.example.com", 7))
    alpn, error = await _handshake(server, _client(None), "api.example.com")
    assert alpn == "failed"
    # The client's alert, or its reset when the alert lost the race with the close.
    assert error in {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "ConnectionResetError",
    }


# --- the commands ---------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ca_create_then_check(tmp_path: Path) -> None:
    out = tmp_path / "ca"
    result = _cli("ca", "create", "--out", str(out), "--permit", "example.com")
    assert result.returncode == 0, result.stderr
    assert str(out / "ca.crt") in result.stdout
    assert "--cacert" in result.stdout
    assert "keytool" in result.stdout
    assert "NODE_EXTRA_CA_CERTS" in result.stdout
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600
    key = (out / "ca.key").read_text()
    for line in key.splitlines()[1:-1]:
        assert line not in result.stdout + result.stderr

    again = _cli("ca", "create", "--out", str(out))
    assert again.returncode == 2
    assert "--force" in again.stderr
    assert (out / "ca.key").read_text() == key
    assert _cli("ca", "create", "--out", str(out), "--force").returncode == 0
    assert (out / "ca.key").read_text() != key

    config = tmp_path / "config.yaml"
    config.write_text(_config(out, [_route(intercept=True)]))
    check = _cli("check", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert "intercept" in check.stdout
    assert f"ca_key=file:{out / 'ca.key'}" in check.stdout
    for line in (out / "ca.key").read_text().splitlines()[1:-1]:
        assert line not in check.stdout + check.stderr


def test_check_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    create_ca(tmp_path / "one")
    create_ca(tmp_path / "two")
    (tmp_path / "one" / "ca.key").write_bytes((tmp_path / "two" / "ca.key").read_bytes())
    config = tmp_path / "config.yaml"
    config.write_text(_config(tmp_path / "one", [_route(intercept=True)]))
    check = _cli("check", "--config", str(config))
    assert check.returncode == 2
    assert "interception.ca_key: the CA key does not match the certificate" in check.stderr
    for line in (tmp_path / "two" / "ca.key").read_text().splitlines()[1:-1]:
        assert line not in check.stdout + check.stderr


def test_ca_create_prints_a_route_its_ca_may_sign_for(tmp_path: Path) -> None:
    """The config `ca create` prints passes `check` as shown: its example host lies inside the
    name constraints (`--permit`), which `check` enforces."""
    out = tmp_path / "ca"
    result = _cli("ca", "create", "--out", str(out), "--permit", "example.com")
    assert result.returncode == 0, result.stderr
    printed = re.search(r"match: \{host: ([^}]+)\}", result.stdout)
    assert printed is not None, result.stdout
    config = tmp_path / "config.yaml"
    config.write_text(
        f"interception:\n"
        f"  ca_cert: {{file: {out / 'ca.crt'}}}\n"
        f"  ca_key: {{file: {out / 'ca.key'}}}\n"
        f"routes:\n"
        f"  - name: vendor\n"
        f"    match: {{host: {printed.group(1)}}}\n"
        f"    intercept: true\n"
        f"    signer: {{scheme: bearer, token: t0ken}}\n"
    )
    check = _cli("check", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert f"https://{printed.group(1)}/" in result.stdout  # the curl line names it too
