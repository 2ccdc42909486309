"""The hmac scheme end to end: curl -> `signing-proxy run` (routes from config/hmac/) -> an
upstream that checks each request with the vendor's rule (tests/verifiers/binance.py, kraken.py,
written from the vendors' documentation). A route with a wrong secret proves the checks can say
no. And `signing-proxy check` refuses a config that would send the secret."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.conftest import REPO
from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream
from tests.verifiers.binance import verify_binance
from tests.verifiers.kraken import verify_kraken

ENV = {
    "BINANCE_API_KEY": "binance-key-e2e",
    "BINANCE_SECRET": "binance-secret-e2e-5a5a",
    "KRAKEN_API_KEY": "kraken-key-e2e",
    "KRAKEN_SECRET": "a3Jha2VuLXNlY3JldC1lMmUtYmFzZTY0LWtleS0wMTIzNDU2Nzg5",
}


def _signer(file: str) -> dict[str, Any]:
    routes = yaml.safe_load((REPO / "config" / "hmac" / file).read_text())["routes"]
    signer: dict[str, Any] = routes[0]["signer"]
    return signer


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        async def binance(request: web.BaseRequest) -> web.Response:
            body = await request.read()
            ok = verify_binance(
                request.rel_url.raw_query_string, body, request.headers,
                ENV["BINANCE_API_KEY"], ENV["BINANCE_SECRET"], now_ms=int(time.time() * 1000),
            )  # fmt: skip
            return web.json_response({"verified": ok}, status=200 if ok else 401)

        async def kraken(request: web.BaseRequest) -> web.Response:
            body = await request.read()
            ok = verify_kraken(
                request.path, body, request.headers, ENV["KRAKEN_API_KEY"], ENV["KRAKEN_SECRET"]
            )
            return web.json_response(
                {"verified": ok, "body": body.decode()}, status=200 if ok else 401
            )

        server.handlers["/binance/"] = binance
        server.handlers["/kraken/"] = kraken
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    wrong = {**_signer("binance.yaml"), "secret": "not-the-secret"}
    routes = [
        {
            "name": "binance",
            "match": {"path_prefix": "/binance"},
            "signer": _signer("binance.yaml"),
        },
        {"name": "kraken", "match": {"path_prefix": "/kraken"}, "signer": _signer("kraken.yaml")},
        {"name": "binance-wrong", "match": {"path_prefix": "/wrong"}, "signer": wrong},
    ]
    for route in routes:
        route["upstream"] = f"{upstream.url}/{route['name'].split('-')[0]}"
    workdir = tmp_path_factory.mktemp("hmac-e2e")
    with running_proxy({"routes": routes}, workdir, env=ENV) as process:
        yield process


def _curl(url: str, *args: str) -> tuple[int, Any]:
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args, "--url", url],
        capture_output=True,
        check=True,
        timeout=60,
    )
    body, code = out.stdout.decode().rsplit("\n", 1)
    return int(code), json.loads(body) if body else None


def test_binance_order_reaches_a_verifying_upstream(proxy: ProxyProcess) -> None:
    query = "symbol=%EF%BC%91%EF%BC%92&side=BUY&type=LIMIT&quantity=1&price=0.1&signature=stale"
    code, body = _curl(f"{proxy.url}/binance/api/v3/order?{query}", "-X", "POST", "-d", "")
    assert (code, body) == (200, {"verified": True})
    code, body = _curl(f"{proxy.url}/binance/api/v3/account", "-H", "X-MBX-APIKEY: stale")
    assert (code, body) == (200, {"verified": True})


def test_binance_with_a_wrong_secret_is_refused_upstream(proxy: ProxyProcess) -> None:
    code, body = _curl(f"{proxy.url}/wrong/api/v3/account?a=1")
    assert (code, body) == (401, {"verified": False})


def test_kraken_order_reaches_a_verifying_upstream(proxy: ProxyProcess) -> None:
    form = "nonce=1&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
    code, body = _curl(f"{proxy.url}/kraken/0/private/AddOrder", "-d", form)
    assert code == 200
    assert body["verified"] is True
    # The proxy's nonce (epoch ms) replaced the app's in place; the rest is the app's.
    nonce, rest = body["body"].split("&", 1)
    assert nonce.startswith("nonce=")
    assert int(nonce.removeprefix("nonce=")) > 1_600_000_000_000
    assert rest == form.split("&", 1)[1]
    # No body at all: the proxy sends a form holding the nonce.
    code, body = _curl(f"{proxy.url}/kraken/0/private/Balance", "-X", "POST")
    assert code == 200
    assert body["verified"] is True


def test_check_refuses_the_secret_in_a_header(tmp_path: Path) -> None:
    signer = _signer("binance.yaml")
    signer["after_sign"]["headers"]["X-MBX-APIKEY"] = "{secret}"
    config = {"routes": [{"name": "leaky", "match": {"host": "api.binance.com"}, "signer": signer}]}
    path = tmp_path / "leaky.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(path)],
        capture_output=True, text=True, timeout=60, env={**ENV, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "routes[0].signer.after_sign.headers.X-MBX-APIKEY" in result.stderr
    assert "{secret} is only allowed in sign.key" in result.stderr
    assert ENV["BINANCE_SECRET"] not in result.stderr + result.stdout


@pytest.mark.parametrize("file", sorted(p.name for p in (REPO / "config" / "hmac").glob("*.yaml")))
def test_every_shipped_route_file_passes_check(file: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        **{var: "dGVzdA==" for var in _env_vars((REPO / "config" / "hmac" / file).read_text())},
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(REPO / "config" / "hmac" / file)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def _env_vars(text: str) -> set[str]:
    import re

    return set(re.findall(r"\{env: ([A-Z0-9_]+)\}", text))


def test_a_form_field_on_a_body_that_is_not_a_form_is_a_415(proxy: ProxyProcess) -> None:
    code, body = _curl(
        f"{proxy.url}/kraken/0/private/AddOrder", "-H", "Content-Type: application/json",
        "-d", '{"nonce": 1}',
    )  # fmt: skip
    assert code == 415
    assert body["error"]["code"] == "unsupported_media_type"
    assert "application/x-www-form-urlencoded" in body["error"]["message"]
    assert body["error"]["route"] == "kraken"
