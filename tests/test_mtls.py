"""Upstream mutual TLS: an upstream that requires a client certificate (trustme) accepts the
proxy's, refuses one without; a bad pair is a config error; a rotated pair (Kubernetes' symlink
swap) is picked up under load with no failed request, for that route only."""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from proxy.config import ConfigError, parse_config
from tests.support import Upstream, running_proxy, running_upstream

ROTATE_WITHIN = 10.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _client_identity(request: web.BaseRequest) -> tuple[str, int]:
    """The client certificate's common name, and the client's port (one per connection)."""
    assert request.transport is not None
    peer = request.transport.get_extra_info("peercert") or {}
    names = [value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"]
    return (names[0] if names else "-"), request.transport.get_extra_info("peername")[1]


class IdentityUpstream:
    """Records (time, client CN, client port) per request."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.calls: list[tuple[float, str, int]] = []
        upstream.handlers["/"] = self.handle

    async def handle(self, request: web.BaseRequest) -> web.Response:
        name, port = _client_identity(request)
        self.calls.append((time.monotonic(), name, port))
        await request.read()
        return web.Response(text=name)


@pytest.fixture(scope="module")
def mtls_upstream(ca: trustme.CA) -> Iterator[IdentityUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
    with running_upstream(context) as upstream:
        yield IdentityUpstream(upstream)


def _write_pair(ca: trustme.CA, directory: Path, name: str, password: bytes | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(f"{name}.example", common_name=name)
    cert.cert_chain_pems[0].write_to_path(str(directory / "tls.crt"))
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    (directory / "tls.key").write_bytes(pem)


def _secret_volume(ca: trustme.CA, root: Path, name: str) -> Path:
    """A directory laid out as the kubelet mounts a Secret: files -> ..data -> a timestamped
    directory, so a rotation is one atomic rename of `..data`."""
    _write_pair(ca, root / f"..{name}", name)
    os.symlink(f"..{name}", root / "..data")
    for file in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{file}", root / file)
    return root


def _rotate(ca: trustme.CA, root: Path, name: str) -> None:
    _write_pair(ca, root / f"..{name}", name)
    os.symlink(f"..{name}", root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")


def _route(name: str, upstream: str, ca_file: Path, **tls: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": f"/{name}"},
        "upstream": upstream,
        "signer": {"scheme": "header", "name": "X-Key", "value": "k"},
        "tls": {"ca_file": str(ca_file), **tls},
    }


def test_upstream_accepts_the_proxy_and_refuses_a_client_without_a_certificate(
    ca: trustme.CA, ca_file: Path, mtls_upstream: IdentityUpstream, tmp_path: Path
) -> None:
    _write_pair(ca, tmp_path / "plain", "client-plain")
    _write_pair(ca, tmp_path / "locked", "client-locked", password=b"pem-pass-Xy7")
    url = mtls_upstream.upstream.url
    config = {
        "routes": [
            _route(
                "mtls",
                url,
                ca_file,
                client_cert=str(tmp_path / "plain/tls.crt"),
                client_key=str(tmp_path / "plain/tls.key"),
            ),
            _route(
                "locked",
                url,
                ca_file,
                client_cert=str(tmp_path / "locked/tls.crt"),
                client_key=str(tmp_path / "locked/tls.key"),
                key_password={"env": "KEY_PASSWORD"},
            ),
            _route("nocert", url, ca_file),
        ]
    }
    with running_proxy(config, tmp_path, env={"KEY_PASSWORD": "pem-pass-Xy7"}) as proxy:
        answer = requests.get(f"{proxy.url}/mtls/x", timeout=10)
        assert (answer.status_code, answer.text) == (200, "client-plain")
        answer = requests.get(f"{proxy.url}/locked/x", timeout=10)
        assert (answer.status_code, answer.text) == (200, "client-locked")
        refused = requests.get(f"{proxy.url}/nocert/x", timeout=10)
        assert refused.status_code == 502
        assert refused.json()["error"]["route"] == "nocert"
        metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
        expiry = [
            line
            for line in metrics.splitlines()
            if line.startswith(
                'signing_proxy_client_certificate_expiry_timestamp_seconds{route="mtls"}'
            )
        ]
        assert len(expiry) == 1
        assert float(expiry[0].split()[-1]) > time.time() + 86400
        assert 'client_certificate_expiry_timestamp_seconds{route="nocert"}' not in metrics
        proxy.stop()
        assert "pem-pass-Xy7" not in proxy.logs()
    # The upstream itself refuses a client without a certificate (the refusal is not ours).
    with pytest.raises(requests.exceptions.ConnectionError):  # TLS 1.3: after the handshake
        requests.get(f"{url}/direct", verify=str(ca_file), timeout=10)
    assert all(name != "-" for _, name, _ in mtls_upstream.calls)


def _config_text(tls: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "routes": [
                {
                    "name": "r",
                    "match": {"path_prefix": "/r"},
                    "upstream": "https://api.example.com",
                    "signer": {"scheme": "header", "name": "X-Key", "value": "k"},
                    "tls": tls,
                }
            ]
        }
    )


def test_a_bad_pair_is_a_config_error_naming_the_key(ca: trustme.CA, tmp_path: Path) -> None:
    _write_pair(ca, tmp_path / "a", "client-a")
    _write_pair(ca, tmp_path / "b", "client-b")
    _write_pair(ca, tmp_path / "c", "client-c", password=b"right-pass")
    cases = {
        "does not match the certificate": {
            "client_cert": str(tmp_path / "a/tls.crt"),
            "client_key": str(tmp_path / "b/tls.key"),
        },
        "set both or neither": {"client_cert": str(tmp_path / "a/tls.crt")},
        "is encrypted: set key_password": {
            "client_cert": str(tmp_path / "c/tls.crt"),
            "client_key": str(tmp_path / "c/tls.key"),
        },
        "or a wrong key_password": {
            "client_cert": str(tmp_path / "c/tls.crt"),
            "client_key": str(tmp_path / "c/tls.key"),
            "key_password": "wrong-pass-Q1",
        },
        "holds no PEM certificate": {
            "client_cert": str(tmp_path / "a/tls.key"),
            "client_key": str(tmp_path / "a/tls.key"),
        },
    }
    for message, tls in cases.items():
        with pytest.raises(ConfigError) as err:
            parse_config(_config_text(tls))
        assert message in str(err.value)
        assert "routes[0].tls" in str(err.value)
        assert "wrong-pass-Q1" not in str(err.value)
    right = {**cases["or a wrong key_password"], "key_password": "right-pass"}
    assert parse_config(_config_text(right)).routes[0].tls.client_cert is not None


def test_rotation_under_load_loses_nothing_and_touches_only_that_route(
    ca: trustme.CA, ca_file: Path, mtls_upstream: IdentityUpstream, tmp_path: Path
) -> None:
    volume = _secret_volume(ca, tmp_path / "secret", "client-one")
    steady_pair = tmp_path / "steady"
    _write_pair(ca, steady_pair, "client-steady")
    url = mtls_upstream.upstream.url
    config = {
        "routes": [
            _route(
                "rotating",
                url,
                ca_file,
                client_cert=str(volume / "tls.crt"),
                client_key=str(volume / "tls.key"),
            ),
            _route(  # another route with its own certificate, which does not change
                "steady",
                url,
                ca_file,
                client_cert=str(steady_pair / "tls.crt"),
                client_key=str(steady_pair / "tls.key"),
            ),
        ]
    }
    stop = threading.Event()
    failures: list[str] = []
    answered: list[str] = []

    def load() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    answer = session.get(f"{proxy.url}/rotating/x", timeout=10)
                    answered.append(answer.text)
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    def steady() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.get(f"{proxy.url}/steady/x", timeout=10)
                if answer.status_code != 200:
                    failures.append(f"steady {answer.status_code}")
                time.sleep(0.05)

    with running_proxy(config, tmp_path) as proxy:
        threads = [threading.Thread(target=load) for _ in range(4)]
        threads.append(threading.Thread(target=steady))
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            swapped = time.monotonic()
            _rotate(ca, volume, "client-two")
            deadline = swapped + ROTATE_WITHIN
            while "client-two" not in answered[-20:] and time.monotonic() < deadline:
                time.sleep(0.05)
            seen_two = time.monotonic()
            assert "client-two" in answered[-20:], "the rotated certificate was not picked up"
            time.sleep(1.5)  # load goes on after the swap
        finally:
            stop.set()
            for thread in threads:
                thread.join(20)
        assert failures == []
        calls = list(mtls_upstream.calls)
        steady_ports = [(t, port) for t, name, port in calls if name == "client-steady"]
        rotating = [(t, name, port) for t, name, port in calls if t >= swapped - 1.0]
        # After the swap settled, only the new certificate, on connections never used before.
        settled = [(name, port) for t, name, port in rotating if t > seen_two + 0.5]
        assert settled
        assert {name for name, _ in settled} <= {"client-two", "client-steady"}
        old_ports = {port for t, name, port in rotating if name == "client-one"}
        assert old_ports
        assert not old_ports & {port for name, port in settled if name == "client-two"}
        # The other route kept its pooled connection through the reload.
        before = {port for t, port in steady_ports if swapped - 1.0 <= t < swapped}
        after = {port for t, port in steady_ports if t > seen_two + 0.5}
        assert before
        assert after <= before
        assert "config_reloaded" in proxy.logs()


def test_the_token_endpoint_gets_the_signers_own_client_certificate(
    ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    _write_pair(ca, tmp_path / "token-client", "token-client")
    seen: list[str] = []

    async def token(request: web.BaseRequest) -> web.Response:
        seen.append(_client_identity(request)[0])
        await request.read()
        return web.json_response({"access_token": "mtls-token", "token_type": "Bearer"})

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    with running_upstream(context) as endpoint, running_upstream() as api:
        endpoint.handlers["/token"] = token
        signer = {
            "scheme": "oauth2-client-credentials",
            "token_url": f"{endpoint.url}/token",
            "client_id": "c",
            "client_secret": "s",
            "tls": {
                "ca_file": str(ca_file),
                "client_cert": str(tmp_path / "token-client/tls.crt"),
                "client_key": str(tmp_path / "token-client/tls.key"),
            },
        }
        config = {
            "routes": [
                {"name": "o", "match": {"path_prefix": "/o"}, "upstream": api.url, "signer": signer}
            ]
        }
        with running_proxy(config, tmp_path) as proxy:
            answer = requests.get(f"{proxy.url}/o/x", timeout=10)
            assert answer.status_code == 200
        assert api.seen[-1].headers["Authorization"] == "Bearer mtls-token"
        assert seen == ["token-client"]
