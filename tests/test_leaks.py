"""Nothing the proxy emits — logs, metrics, error bodies, CLI output — contains a secret."""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qsl

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
    "LEAK_QUERY_KEY": "leak-query-key-Ub62",
    "LEAK_CLIENT_SECRET": "leak-client-secret-Tt31",
    "LEAK_ACCESS_TOKEN": "leak-access-token-Jr55",  # issued by the token endpoint below
    "LEAK_HMAC_SECRET": "leak-hmac-secret-Rr55",
    "LEAK_HMAC_KEY": "leak-rfc9421-hmac-key-Vv31",
    "LEAK_CAVAGE_KEY": "leak-cavage-hmac-key-Cc47",
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


# Filled in by the test: the private key's PEM lines and the client assertions it signed.
GENERATED: list[str] = []


def _private_key_file(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    GENERATED.extend(line for line in pem.decode().splitlines() if "PRIVATE KEY" not in line)
    path = directory / "client-key.pem"
    path.write_bytes(pem)
    return path


def _oauth_routes(upstream_url: str, secret_dir: Path) -> list[dict[str, object]]:
    def oauth(name: str, token_path: str, **signer: object) -> dict[str, object]:
        return {
            "name": name,
            "match": {"path_prefix": f"/{name}"},
            "upstream": upstream_url,
            "signer": {
                "scheme": "oauth2-client-credentials",
                "token_url": f"{upstream_url}{token_path}",
                "client_id": "leak-client",
                **signer,
            },
        }

    secret = {"client_secret": {"env": "LEAK_CLIENT_SECRET"}}
    key = {"file": str(_private_key_file(secret_dir))}
    return [
        oauth("oauth", "/oauth/token", **secret),
        oauth("oauth-post", "/oauth/token", auth_method="client_secret_post", **secret),
        oauth("oauth-jwt", "/oauth/token", auth_method="private_key_jwt", private_key=key),
        oauth("oauth-bad", "/oauth/hostile", auth_method="client_secret_post", **secret),
    ]


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
                "name": "query-key",
                "match": {"path_prefix": "/qk"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "query-key",
                    "name": "key",
                    "value": {"env": "LEAK_QUERY_KEY"},
                },
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
            {
                "name": "cavage",
                "match": {"path_prefix": "/cavage"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "http-signatures-cavage",
                    "key_id": "cavage-key-id",
                    "algorithm": "hmac-sha256",
                    "key": {"env": "LEAK_CAVAGE_KEY"},
                },
            },
            *_oauth_routes(upstream_url, secret_dir),
        ],
    }


def _assert_clean(label: str, text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked into {label}"
    for line in KEY_MATERIAL:
        assert line not in text, f"the private key leaked into {label}"
    for value in GENERATED:
        assert value not in text, f"a private key line or client assertion leaked into {label}"


def test_nothing_emitted_contains_a_secret(tmp_path: Path) -> None:
    emitted: list[tuple[str, str]] = []
    with running_upstream() as upstream:

        async def quiet(request: web.BaseRequest) -> web.Response:
            await upstream.record(request)  # an echo would reflect the credentials back
            if "refuse" in request.path:  # the token is refused: renewed, replayed once
                return web.Response(status=401, text="no")
            return web.Response(text="ok")

        async def token(request: web.BaseRequest) -> web.Response:
            form = dict(parse_qsl((await request.read()).decode()))
            if "client_assertion" in form:
                GENERATED.append(form["client_assertion"])
            return web.json_response(
                {"access_token": SECRETS["LEAK_ACCESS_TOKEN"], "token_type": "bearer"}
            )

        async def hostile(request: web.BaseRequest) -> web.Response:
            # An authorization server that echoes what it was sent in its error.
            body = (await request.read()).decode()
            echo = dict(parse_qsl(body)).get("client_secret", "")
            return web.json_response({"error": echo, "error_description": body}, status=400)

        upstream.handlers["/oauth/token"] = token
        upstream.handlers["/oauth/hostile"] = hostile
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
                ("GET", "/qk/x?key=app&y=1", None),
                ("GET", "/qk/../x?key=app", None),  # 400
                ("GET", "/nowhere", None),  # 403
                ("GET", "/bearer/../x", None),  # 400 (requests keeps it raw)
                ("GET", "/oauth/x", None),
                ("GET", "/oauth/refuse", None),  # 401 twice: renewed and replayed once
                ("POST", "/oauth-post/refuse", b"a body"),
                ("GET", "/oauth-jwt/x", None),
                ("GET", "/oauth-bad/x", None),  # 503: the token request fails
                ("POST", "/rfc9421/x", b'{"a": 1}'),
                ("GET", "/hmac9421/x", None),  # refused: no X-Required header
                ("GET", "/cavage/x?q=1", None),
                ("POST", "/cavage/x", b"a body"),  # refused: no Content-Type (signed on POST)
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
        assert any(f"key={SECRETS['LEAK_QUERY_KEY']}" in s.raw_path for s in upstream.seen)
        token_header = f"Bearer {SECRETS['LEAK_ACCESS_TOKEN']}"
        assert any(s.headers.get("Authorization") == token_header for s in upstream.seen)
        assert any(s.startswith("eyJ") for s in GENERATED)  # an assertion was signed
        cavage = 'Signature version="1",keyId="cavage-key-id"'
        assert any(s.headers.get("Authorization", "").startswith(cavage) for s in upstream.seen)

        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {**SECRETS, "PATH": "/usr/bin:/bin"}
        for args in (
            ["check", "--config", str(config_path)],
            ["sign", "--config", str(config_path), "http://127.0.0.1/bearer/x"],
            ["sign", "--config", str(config_path), "--json", "--data", "{}", "http://h/devo/x"],
            ["sign", "--config", str(config_path), "http://h/dr/x?a=1"],
            ["sign", "--config", str(config_path), "--route", "header", "http://h/y"],
            ["sign", "--config", str(config_path), "--json", "http://h/qk/x?key=1"],
            ["sign", "--config", str(config_path), "http://h/oauth/x"],
            ["sign", "--config", str(config_path), "--fetch-token", "http://h/oauth/x"],
            ["sign", "--config", str(config_path), "--fetch-token", "--json", "/oauth-jwt/x"],
            ["sign", "--config", str(config_path), "--explain", "http://h/hmac/x?a=1"],
            ["sign", "--config", str(config_path), "--explain", "--json", "http://h/hmac/x"],
            ["sign", "--config", str(config_path), "--json", "--data", "{}", "http://h/rfc9421/x"],
            ["sign", "--config", str(config_path), "-H", "X-Required: 1", "http://h/hmac9421/x"],
            ["sign", "--config", str(config_path), "--json", "http://h/cavage/x"],
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


@pytest.mark.parametrize("secret", ['leak-"quoted"-Jj62', "leak-back\\slash-Jj63"])
def test_sign_explain_redacts_a_secret_json_escapes(tmp_path: Path, secret: str) -> None:
    """`sign --explain --json` redacts the explanation before writing it as JSON: a secret with
    a `"` or `\\` is escaped there, and a redaction of the JSON text would miss it. Here the
    signed message holds it (the request's body)."""
    hmac_route = {
        "name": "hmac",
        "match": {"path_prefix": "/hmac"},
        "upstream": "http://127.0.0.1:1",
        "signer": {
            "scheme": "hmac",
            "key_id": "public-hmac-key-id",
            "secret": {"env": "LEAK_ESCAPED_SECRET"},
            "sign": {
                "algorithm": "hmac-sha256",
                "key": "{secret}&{key_id}",
                "message": "{method}{path}{body}",
            },
            "after_sign": {"headers": {"Authorization": "HMAC {key_id}:{signature}"}},
        },
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"routes": [hmac_route]}))
    env = {"LEAK_ESCAPED_SECRET": secret, "PATH": "/usr/bin:/bin"}
    for output in ("--json", None):
        # The secret in the body (an app echoing it): the signed message shows it.
        args = ["sign", "--config", str(config_path), "--explain", "--data", f"k={secret}"]
        args.append("http://h/hmac/x")
        result = subprocess.run(
            [sys.executable, "-m", "proxy", *args, *([output] if output else [])],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        for form in (secret, json.dumps(secret)[1:-1]):  # as is, and as JSON writes it
            assert form not in result.stdout + result.stderr, output
        explained = result.stdout.split("== explain ==")[-1]
        if output == "--json":  # and none in the decoded strings
            document = json.loads(result.stdout)
            explained = "\n".join(_strings(document["explain"]))
            for text in _strings(document):
                assert secret not in text
                assert json.dumps(secret)[1:-1] not in text
        assert "<redacted secret>" in explained  # the explanation did hold it


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (key, *_strings(item))]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []
