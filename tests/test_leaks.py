"""Nothing the proxy emits — logs, metrics, error bodies, CLI output — contains a secret."""

from __future__ import annotations

import contextlib
import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from tests.support import free_port, running_proxy, running_upstream

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)

# Distinctive values: a hit can only be a leak.
SECRETS = {
    "LEAK_BEARER": "leak-bearer-Zq81xT0p",
    "LEAK_DEVO_SECRET": "leak-devo-secret-Hh27Wm",
    "LEAK_DR_SECRET": "leak-devresults-secret-Pp90",
    "LEAK_HEADER": "leak-header-value-Ka44",
    "LEAK_HMAC_SECRET": "leak-hmac-secret-Rr55",
    "LEAK_HMAC_KEY": "leak-rfc9421-hmac-key-Vv31",
}
# A private key (RFC 9421 route): its PEM lines must never appear, whole or in part.
PRIVATE_PEM = (
    ed25519.Ed25519PrivateKey.generate()
    .private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    .decode()
)
# The interception CA's key (the crown jewel): from a file, as a Kubernetes Secret gives it.
CA_KEY_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    .decode()
)
KEY_MATERIAL = [
    line
    for pem in (PRIVATE_PEM, CA_KEY_PEM)
    for line in pem.splitlines()
    if not line.startswith("-----")
]


def _write_ca(secret_dir: Path) -> None:
    """A CA certificate for CA_KEY_PEM, as `signing-proxy ca create` would make it."""
    key = serialization.load_pem_private_key(CA_KEY_PEM.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leak test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    (secret_dir / "ca.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (secret_dir / "ca.key").write_text(CA_KEY_PEM)


def _config(upstream_url: str, secret_dir: Path) -> dict[str, object]:
    (secret_dir / "devo-secret").write_text(SECRETS["LEAK_DEVO_SECRET"] + "\n")
    (secret_dir / "client.pem").write_text(PRIVATE_PEM)
    _write_ca(secret_dir)
    return {
        "interception": {
            "ca_cert": {"file": str(secret_dir / "ca.crt")},
            "ca_key": {"file": str(secret_dir / "ca.key")},
        },
        "routes": [
            {
                "name": "intercepted",
                "match": {"host": "intercepted.test"},
                "upstream": upstream_url,
                "intercept": True,
                "signer": {"scheme": "bearer", "token": {"env": "LEAK_BEARER"}},
            },
            {
                "name": "bearer",
                "match": {"path_prefix": "/bearer"},
                "upstream": upstream_url,
                "signer": {"scheme": "bearer", "token": {"env": "LEAK_BEARER"}},
            },
            {
                "name": "devo",
                "match": {"path_prefix": "/devo"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "devo",
                    "api_key": "public-key-id",
                    "api_secret": {"file": str(secret_dir / "devo-secret")},
                },
                "max_body_bytes": 64,
            },
            {
                "name": "devresults",
                "match": {"path_prefix": "/dr"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "devresults",
                    "token": "public-token",
                    "secret": {"env": "LEAK_DR_SECRET"},
                },
            },
            {
                "name": "hmac",
                "match": {"path_prefix": "/hmac"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "hmac",
                    "key_id": "public-hmac-key-id",
                    "secret": {"env": "LEAK_HMAC_SECRET"},
                    "vars": {"ts": {"now": "epoch_ms"}, "n": {"random": "hex16"}},
                    "before_sign": {"form": {"nonce": "{n}"}},
                    "sign": {
                        "algorithm": "hmac-sha256",
                        "key": "{secret}&{key_id}",
                        "message": "{method}{path}{ts}{body}",
                    },
                    "after_sign": {"headers": {"Authorization": "HMAC {key_id}:{signature}"}},
                },
            },
            {
                "name": "header",
                "match": {"path_prefix": "/dead"},
                "upstream": f"http://127.0.0.1:{free_port()}",
                "signer": {"scheme": "header", "name": "X-Key", "value": {"env": "LEAK_HEADER"}},
            },
            {
                "name": "rfc9421",
                "match": {"path_prefix": "/rfc9421"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "http-message-signatures",
                    "key_id": "public-key-id-9421",
                    "algorithm": "ed25519",
                    "key": {"file": str(secret_dir / "client.pem")},
                    "components": ["@method", "@path", "content-digest"],
                },
            },
            {
                "name": "hmac9421",
                "match": {"path_prefix": "/hmac9421"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "http-message-signatures",
                    "key_id": "hmac-key-id",
                    "algorithm": "hmac-sha256",
                    "key": {"env": "LEAK_HMAC_KEY"},
                    "components": ["@method", "x-required"],
                },
            },
        ],
    }


def _assert_clean(label: str, text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked into {label}"
    for line in KEY_MATERIAL:
        assert line not in text, f"the private key leaked into {label}"


def test_nothing_emitted_contains_a_secret(tmp_path: Path) -> None:
    emitted: list[tuple[str, str]] = []
    with running_upstream() as upstream:

        async def quiet(request: web.BaseRequest) -> web.Response:
            await upstream.record(request)  # an echo would reflect the credentials back
            return web.Response(text="ok")

        upstream.handlers["/"] = quiet
        config = _config(upstream.url, tmp_path)
        with running_proxy(config, tmp_path, env=SECRETS) as proxy:
            calls = [
                ("GET", "/bearer/x?q=1", None),
                ("POST", "/devo/x", b'{"a": 1}'),
                ("POST", "/devo/x", b"x" * 200),  # 413
                ("GET", "/dr/x?t=stale&s=stale", None),
                ("POST", "/hmac/x", b"a=1"),  # not a form: refused
                ("GET", "/hmac/x?q=1", None),
                ("GET", "/dead/x", None),  # 502
                ("GET", "/nowhere", None),  # 403
                ("GET", "/bearer/../x", None),  # 400 (requests keeps it raw)
                ("POST", "/rfc9421/x", b'{"a": 1}'),
                ("GET", "/hmac9421/x", None),  # refused: no X-Required header
            ]
            for method, path, body in calls:
                response = requests.request(method, proxy.url + path, data=body, timeout=10)
                emitted.append((f"{method} {path} body", response.text))
                emitted.append((f"{method} {path} headers", repr(dict(response.headers))))
            # Through an intercepted tunnel (the CA key signs its leaf), and a client that
            # refuses the leaf (a failed handshake is logged and counted).
            session = requests.Session()
            session.trust_env = False  # this machine's REQUESTS_CA_BUNDLE would override verify
            tunneled = session.get(
                "https://intercepted.test/x",
                proxies={"https": proxy.url},
                verify=str(tmp_path / "ca.crt"),
                timeout=10,
            )
            assert tunneled.status_code == 200
            emitted.append(("tunnel body", tunneled.text))
            with contextlib.suppress(requests.exceptions.SSLError):
                session.get(
                    "https://intercepted.test/y",
                    proxies={"https": proxy.url},
                    verify=True,
                    timeout=10,
                )
            emitted.append(("metrics", requests.get(proxy.admin_url + "/metrics", timeout=5).text))
            for path in ("/healthz", "/readyz", "/config", "/"):
                emitted.append((path, requests.get(proxy.admin_url + path, timeout=5).text))
            code = proxy.stop()
        assert code == 0
        emitted.append(("logs", proxy.logs()))
        # The upstream did get the credentials: the scan is not vacuous.
        assert any(
            s.headers.get("Authorization") == f"Bearer {SECRETS['LEAK_BEARER']}"
            for s in upstream.seen
        )

        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {**SECRETS, "PATH": "/usr/bin:/bin"}
        for args in (
            ["check", "--config", str(config_path)],
            ["sign", "--config", str(config_path), "http://127.0.0.1/bearer/x"],
            ["sign", "--config", str(config_path), "--json", "--data", "{}", "http://h/devo/x"],
            ["sign", "--config", str(config_path), "http://h/dr/x?a=1"],
            ["sign", "--config", str(config_path), "--route", "header", "http://h/y"],
            ["sign", "--config", str(config_path), "--explain", "http://h/hmac/x?a=1"],
            ["sign", "--config", str(config_path), "--explain", "--json", "http://h/hmac/x"],
            ["sign", "--config", str(config_path), "--json", "--data", "{}", "http://h/rfc9421/x"],
            ["sign", "--config", str(config_path), "-H", "X-Required: 1", "http://h/hmac9421/x"],
        ):
            result = subprocess.run(
                [sys.executable, "-m", "proxy", *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            emitted.append((" ".join(args[:1]), result.stdout + result.stderr))
    assert len(emitted) > 20
    for label, text in emitted:
        _assert_clean(label, text)
