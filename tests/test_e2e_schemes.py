"""Each vendor scheme end to end: curl -> `signing-proxy run` -> an upstream that verifies the
signature with the independent verifiers in tests/verifiers (written from docs/schemes.md, not from
the signers). A route with a wrong secret proves the verifiers can say no."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream
from tests.verifiers.devengo import verify_devengo
from tests.verifiers.devo import verify_devo, verify_devo_token
from tests.verifiers.devresults import verify_devresults
from tests.verifiers.jscrambler import verify_body, verify_query

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)

MIB = 1024 * 1024
CREDS = {
    "devresults": {"token": "dr-token-e2e", "secret": "dr-secret-e2e-1f9c"},
    "devo": {"api_key": "devo-key-e2e", "api_secret": "devo-secret-e2e-77aa"},
    "devo-token": {"token": "devo-standalone-e2e-3b3b"},
    "jscrambler": {"access_key": "JS-ACCESS-E2E", "secret_key": "js-secret-e2e-c0de"},
    "devengo": {"api_key_id": "devengo-id-e2e", "secret": "devengo-secret-e2e-9e9e"},
}

Check = Callable[[web.BaseRequest, bytes], bool]


def _checks() -> dict[str, Check]:
    now_ms = lambda: int(time.time() * 1000)  # noqa: E731

    def devresults(request: web.BaseRequest, body: bytes) -> bool:
        c = CREDS["devresults"]
        return verify_devresults(
            request.rel_url.raw_query_string, c["token"], c["secret"], now_ms=now_ms()
        )

    def devo(request: web.BaseRequest, body: bytes) -> bool:
        c = CREDS["devo"]
        return verify_devo(request.headers, body, c["api_key"], c["api_secret"], now_ms=now_ms())

    def devo_token(request: web.BaseRequest, body: bytes) -> bool:
        return verify_devo_token(request.headers, CREDS["devo-token"]["token"])

    def jscrambler(request: web.BaseRequest, body: bytes) -> bool:
        c = CREDS["jscrambler"]
        kwargs: dict[str, Any] = {"access_key": c["access_key"], "secret_key": c["secret_key"]}
        host = request.host.split(":")[0]
        if request.method in {"POST", "PUT", "PATCH"}:
            return verify_body(
                request.method, host, request.path, body, request.headers["Content-Type"], **kwargs
            )
        return verify_query(
            request.method, host, request.path, request.rel_url.raw_query_string, **kwargs
        )

    def devengo(request: web.BaseRequest, body: bytes) -> bool:
        c = CREDS["devengo"]
        return verify_devengo(
            request.headers.items(), body, c["api_key_id"], c["secret"], now_s=int(time.time())
        )

    return {
        "devresults": devresults,
        "devo": devo,
        "devo-token": devo_token,
        "jscrambler": jscrambler,
        "devengo": devengo,
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    checks = _checks()
    with running_upstream() as server:

        def verifying(scheme: str) -> Any:
            async def handler(request: web.BaseRequest) -> web.Response:
                body = await request.content.read()  # read(): a 1 MiB client_max_size
                ok = checks[scheme](request, body)
                return web.json_response(
                    {"verified": ok, "body_len": len(body), "path": request.path},
                    status=200 if ok else 401,
                )

            return handler

        for scheme in checks:
            server.handlers[f"/verify/{scheme}/"] = verifying(scheme)
        yield server


def _routes(upstream: Upstream) -> list[dict[str, Any]]:
    routes = []
    for scheme, creds in CREDS.items():
        name = scheme
        signer = {"scheme": scheme, **creds}
        common = {"upstream": f"{upstream.url}/verify/{scheme}", "signer": signer}
        routes.append({"name": name, "match": {"path_prefix": f"/{name}"}, **common})
        routes.append({"name": f"{name}-fwd", "match": {"host": f"{name}.test"}, **common})
        if scheme in {"devo", "devengo", "jscrambler"}:
            routes[-2]["max_body_bytes"] = 6 * MIB
            routes[-1]["max_body_bytes"] = 6 * MIB
    wrong = {"scheme": "devo", "api_key": CREDS["devo"]["api_key"], "api_secret": "wrong-secret"}
    routes.append(
        {
            "name": "devo-wrong",
            "match": {"path_prefix": "/devo_wrong"},
            "upstream": f"{upstream.url}/verify/devo",
            "signer": wrong,
        }
    )
    routes.append(
        {
            "name": "devo-small",
            "match": {"path_prefix": "/devo_small"},
            "upstream": f"{upstream.url}/verify/devo",
            "signer": {"scheme": "devo", **CREDS["devo"]},
            "max_body_bytes": MIB,
        }
    )
    return routes


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = {"routes": _routes(upstream)}
    with running_proxy(config, tmp_path_factory.mktemp("schemes")) as process:
        yield process


def _curl(proxy: ProxyProcess, mode: str, route: str, path: str, *args: str) -> tuple[int, Any]:
    if mode == "reverse":
        target = ["--url", f"{proxy.url}/{route}{path}"]
    else:
        target = ["-x", proxy.url, "--url", f"http://{route}.test{path}"]
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args, *target],
        capture_output=True,
        check=True,
        timeout=60,
    )
    body, code = out.stdout.decode().rsplit("\n", 1)
    return int(code), json.loads(body) if body else None


MODES = ["reverse", "forward"]


@pytest.fixture(scope="module")
def big_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("body") / "big.json"
    items = [{"id": i, "name": f"item {i} — ünïcode", "tags": ["a", "b"]} for i in range(70_000)]
    path.write_text(json.dumps({"items": items}))
    assert 5 * MIB <= path.stat().st_size < 6 * MIB
    return path


@pytest.mark.parametrize("mode", MODES)
def test_devresults(proxy: ProxyProcess, mode: str) -> None:
    code, body = _curl(proxy, mode, "devresults", "/api/awards?page=2&Sort=asc&sort=desc&t=stale")
    assert (code, body["verified"]) == (200, True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scheme", ["devo", "devengo"])
def test_5_mib_json_body(proxy: ProxyProcess, mode: str, scheme: str, big_json: Path) -> None:
    code, body = _curl(
        proxy, mode, scheme, "/v1/things", "-H", "Content-Type: application/json",
        "--data-binary", f"@{big_json}",
    )  # fmt: skip
    assert (code, body["verified"]) == (200, True)
    assert body["body_len"] == big_json.stat().st_size


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scheme", ["devo", "devengo", "devo-token"])
def test_bodyless_requests(proxy: ProxyProcess, mode: str, scheme: str) -> None:
    code, body = _curl(proxy, mode, scheme, "/v1/accounts", "-H", "Authorization: Bearer stale")
    assert (code, body["verified"]) == (200, True)


@pytest.mark.parametrize("mode", MODES)
def test_jscrambler_get(proxy: ProxyProcess, mode: str) -> None:
    code, body = _curl(
        proxy, mode, "jscrambler", "/v3/code.json?limit=10&name=Ol%C3%A1+mundo&access_key=stale"
    )
    assert (code, body["verified"]) == (200, True)


@pytest.mark.parametrize("mode", MODES)
def test_jscrambler_multipart_two_files(proxy: ProxyProcess, mode: str, tmp_path: Path) -> None:
    first = tmp_path / "app.js"
    first.write_text("console.log('hello');\n" * 1000)
    second = tmp_path / "blob.bin"
    second.write_bytes(bytes(range(256)) * 512)
    code, body = _curl(
        proxy, mode, "jscrambler", "/v3/code.json",
        "-F", "file_0=@" + str(first), "-F", "file_1=@" + str(second),
        "-F", "applicationId=abc123", "-F", "timestamp=stale",
    )  # fmt: skip
    assert (code, body["verified"]) == (200, True)


def test_jscrambler_json_post_is_refused(proxy: ProxyProcess) -> None:
    code, body = _curl(
        proxy, "reverse", "jscrambler", "/v3/code.json", "-H", "Content-Type: application/json",
        "--data", '{"a": 1}',
    )  # fmt: skip
    assert code == 415
    assert body["error"]["code"] == "unsupported_media_type"
    assert "form-urlencoded or multipart" in body["error"]["message"]


def test_body_over_limit_is_413(proxy: ProxyProcess, upstream: Upstream, big_json: Path) -> None:
    code, body = _curl(proxy, "reverse", "devo_small", "/x", "--data-binary", f"@{big_json}")
    assert code == 413
    assert body["error"]["code"] == "body_too_large"


def test_wrong_secret_is_rejected_by_the_verifier(proxy: ProxyProcess) -> None:
    code, body = _curl(proxy, "reverse", "devo_wrong", "/x", "--data", '{"a": 1}')
    assert code == 401
    assert body["verified"] is False


@pytest.mark.parametrize("scheme", ["devo", "devengo"])
def test_gzip_body_is_signed_and_sent_as_the_app_sent_it(
    proxy: ProxyProcess, scheme: str, tmp_path: Path
) -> None:
    import gzip

    compressed = tmp_path / "body.json.gz"
    compressed.write_bytes(gzip.compress(b'{"items": [1, 2, 3]}' * 500))
    code, body = _curl(
        proxy, "reverse", scheme, "/v1/things", "-H", "Content-Encoding: gzip",
        "-H", "Content-Type: application/json", "--data-binary", f"@{compressed}",
    )  # fmt: skip
    assert (code, body["verified"]) == (200, True)
    assert body["body_len"] == compressed.stat().st_size  # never decoded on the way
