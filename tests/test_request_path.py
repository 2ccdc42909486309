"""The whole request path in-process: admit -> route -> read body -> sign -> forward -> relay.

The handler runs behind aiohttp's test server and is driven by aiohttp's test client; the
upstream is a real aiohttp server on loopback (tests/support.py). No subprocess: the end-to-end
tests (test_e2e_*.py) test the process itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import structlog
import yaml
from aiohttp import web

from proxy.app import Runtime
from proxy.config import parse_config
from proxy.signers import (
    Signer,
    SigningContext,
    SignResult,
    UpstreamRequest,
)
from proxy.signers.bearer import BearerConfig
from tests.support import Upstream, in_process_proxy, running_upstream
from tests.verifiers.devo import verify_devo

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)

TOKEN = "tok-3f9a"
DEVO_KEY, DEVO_SECRET = "devo-key-1", "devo-secret-1"
BIG = bytes(range(256)) * 1200  # 300 KiB: streamed, not read whole


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        async def big(request: web.BaseRequest) -> web.StreamResponse:
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(BIG), 50_000):
                await response.write(BIG[start : start + 50_000])
            await response.write_eof()
            return response

        async def cut(request: web.BaseRequest) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Length": str(len(BIG))})
            await response.prepare(request)
            await response.write(BIG[:100_000])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()  # the upstream dies mid-body
            return response

        async def slow(request: web.BaseRequest) -> web.StreamResponse:
            await asyncio.sleep(2)
            return await server.echo(request)

        server.handlers.update({"/up/big": big, "/up/cut": cut, "/up/slow": slow})
        yield server


def _config(upstream: Upstream, **route: Any) -> dict[str, Any]:
    base = {
        "name": "r",
        "match": {"path_prefix": "/r"},
        "upstream": f"{upstream.url}/up",
        "signer": {"scheme": "bearer", "token": TOKEN},
    }
    return {"routes": [{**base, **route}]}


def _sent_headers(body: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in body["headers"]}


def _no_status_zero(metrics: str) -> None:
    assert 'code="0"' not in metrics


# -- the happy path ------------------------------------------------------------------------------


async def test_a_get_is_signed_and_hop_by_hop_headers_stay_behind(upstream: Upstream) -> None:
    async with in_process_proxy(_config(upstream)) as proxy:
        response = await proxy.client.get(
            "/r/items?page=1",
            headers={
                "Connection": "X-Drop",
                "X-Drop": "1",
                "Proxy-Authorization": "Basic eDp5",
                "Authorization": "Bearer the-app-s-own",
                "X-Keep": "yes",
            },
        )
        body = await response.json()
    assert response.status == 200
    assert body["raw_path"] == "/up/items?page=1"
    sent = _sent_headers(body)
    assert sent["authorization"] == f"Bearer {TOKEN}"  # ours, never the app's
    assert sent["x-keep"] == "yes"
    assert sent["host"] == upstream.url.removeprefix("http://")
    assert not {"x-drop", "proxy-authorization", "connection"} & sent.keys()


async def test_a_signed_body_is_read_signed_and_sent(upstream: Upstream) -> None:
    signer = {"scheme": "devo", "api_key": DEVO_KEY, "api_secret": DEVO_SECRET}
    payload = b'{"query": "from demo.ecommerce.data"}'
    async with in_process_proxy(_config(upstream, signer=signer)) as proxy:
        response = await proxy.client.post("/r/search", data=payload)
        assert response.status == 200
    seen = upstream.seen[-1]
    assert seen.body == payload
    assert verify_devo(seen.headers, payload, DEVO_KEY, DEVO_SECRET)


async def test_small_answers_go_out_whole_and_large_ones_stream(upstream: Upstream) -> None:
    async with in_process_proxy(_config(upstream)) as proxy:
        small = await proxy.client.get("/r/x")
        small_body = await small.read()
        large = await proxy.client.get("/r/big")
        large_body = await large.read()
        metrics = proxy.scrape()
    assert small.headers["Content-Length"] == str(len(small_body))
    assert large.headers.get("Transfer-Encoding") == "chunked"
    assert hashlib.sha256(large_body).digest() == hashlib.sha256(BIG).digest()
    assert 'signing_proxy_requests_total{code="200",method="GET",route="r"} 2.0' in metrics
    _no_status_zero(metrics)


async def test_an_upstream_dying_mid_body_cuts_the_client_connection(upstream: Upstream) -> None:
    async with in_process_proxy(_config(upstream)) as proxy:
        response = await proxy.client.get("/r/cut")
        assert response.status == 200  # the head had gone out: it cannot become an error
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        metrics = proxy.scrape()
    assert 'signing_proxy_errors_total{code="upstream_aborted",route="r"} 1.0' in metrics
    _no_status_zero(metrics)


async def test_a_retried_status_is_signed_and_sent_again(upstream: Upstream) -> None:
    answers = iter([503, 200])

    async def flaky(request: web.BaseRequest) -> web.StreamResponse:
        seen = await upstream.record(request)
        return web.json_response({"auth": seen.headers["Authorization"]}, status=next(answers))

    upstream.handlers["/up/flaky"] = flaky
    retries = {"attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.01}
    try:
        async with in_process_proxy(_config(upstream, retries=retries)) as proxy:
            response = await proxy.client.get("/r/flaky")
            assert response.status == 200
            assert (await response.json())["auth"] == f"Bearer {TOKEN}"
            metrics = proxy.scrape()
    finally:
        del upstream.handlers["/up/flaky"]
    assert 'signing_proxy_retries_total{route="r"} 1.0' in metrics


# -- client mistakes are 4xx ---------------------------------------------------------------------


JSCRAMBLER = {"scheme": "jscrambler", "access_key": "AK", "secret_key": "SK"}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/json", b'{"a": 1}', 415, "unsupported_media_type"),
        ("multipart/form-data", b"--x\r\n\r\n--x--", 400, "invalid_body"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nX-A: 1\r\n\r\n1\r\n--x--",
            400,
            "invalid_body",
        ),
    ],
)  # fmt: skip
async def test_a_body_the_scheme_cannot_sign_is_the_client_s_4xx(
    upstream: Upstream, content_type: str, body: bytes, status: int, code: str
) -> None:
    before = len(upstream.seen)
    async with in_process_proxy(_config(upstream, signer=JSCRAMBLER)) as proxy:
        response = await proxy.client.post(
            "/r/v3/code.json", data=body, headers={"Content-Type": content_type}
        )
        error = (await response.json())["error"]
        metrics = proxy.scrape()
    assert (response.status, error["code"], error["route"]) == (status, code, "r")
    assert response.headers["Content-Type"] == "application/json"
    assert "SK" not in error["message"]
    assert upstream.seen[before:] == []  # nothing unsigned ever leaves
    assert f'signing_proxy_requests_total{{code="{status}",method="POST",route="r"}} 1.0' in metrics
    assert f'signing_proxy_errors_total{{code="{code}",route="r"}} 1.0' in metrics


# -- the last resort -----------------------------------------------------------------------------

SECRET_IN_MESSAGE = "do-not-log-4c1e"


class _BodyPolicyFails(Signer[BearerConfig]):
    """Fails outside `sign()`, where nothing but the handler's last resort catches it."""

    def __init__(self, config: BearerConfig) -> None:
        pass

    def needs_body(self, method: str) -> bool:
        raise RuntimeError(f"unexpected, with a secret in the message: {SECRET_IN_MESSAGE}")

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        return SignResult(request, "")


class _HeaderWithNewline(Signer[BearerConfig]):
    """Signs a header value aiohttp refuses to send (a newline: a secret file's last line)."""

    def __init__(self, config: BearerConfig) -> None:
        pass

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        header = {"Authorization": f"Bearer {SECRET_IN_MESSAGE}\nX-Injected: 1"}
        return SignResult(request.with_headers(header), "")


@pytest.mark.parametrize("signer_class", [_BodyPolicyFails, _HeaderWithNewline])
async def test_an_unexpected_exception_is_a_json_500_counted_and_logged_once(
    upstream: Upstream, signer_class: type[Signer[BearerConfig]]
) -> None:
    before = len(upstream.seen)
    async with in_process_proxy(_config(upstream)) as proxy:
        proxy.use_signer(signer_class(BearerConfig(scheme="bearer", token="t")))
        with structlog.testing.capture_logs() as events:
            response = await proxy.client.get("/r/x")
            error = (await response.json())["error"]
        metrics = proxy.scrape()
        still_serving = await proxy.client.get("/r/x")
    assert (response.status, error["code"], error["route"]) == (500, "internal_error", "r")
    assert response.headers["Content-Type"] == "application/json"
    assert SECRET_IN_MESSAGE not in error["message"]
    assert upstream.seen[before:] == []
    assert 'signing_proxy_requests_total{code="500",method="GET",route="r"} 1.0' in metrics
    assert 'signing_proxy_errors_total{code="internal_error",route="r"} 1.0' in metrics
    _no_status_zero(metrics)
    logged = [event for event in events if event["event"] == "internal_error"]
    assert len(logged) == 1, events
    assert logged[0]["error_type"] in {"RuntimeError", "ValueError"}
    assert "Traceback" not in logged[0]["traceback"]  # the frames, not the message
    assert re.search(r'File ".*", line \d+', logged[0]["traceback"])
    assert SECRET_IN_MESSAGE not in repr(events)
    assert still_serving.status == 500  # the handler survived, and answers the same way


async def test_a_client_gone_before_the_answer_is_499_never_0(upstream: Upstream) -> None:
    async with in_process_proxy(_config(upstream)) as proxy:
        with pytest.raises(asyncio.TimeoutError):
            await proxy.client.get("/r/slow", timeout=aiohttp.ClientTimeout(total=0.3))
        for _ in range(100):  # the handler finishes once it sees the connection gone
            metrics = proxy.scrape()
            if "code=" in metrics and 'route="r"' in metrics and proxy.metrics.in_flight == 0:
                break
            await asyncio.sleep(0.05)
    assert 'signing_proxy_requests_total{code="499",method="GET",route="r"} 1.0' in metrics
    assert 'signing_proxy_errors_total{code="client_closed",route="r"} 1.0' in metrics
    _no_status_zero(metrics)


# -- a reload while a request runs ---------------------------------------------------------------


async def test_a_request_keeps_the_runtime_it_arrived_with(upstream: Upstream) -> None:
    """The swap lands while the request's body is still arriving, before it is signed (devo
    signs the body): it is signed with the old key, and gives its slot back to the old route."""

    def devo(key: str) -> dict[str, Any]:
        signer = {"scheme": "devo", "api_key": key, "api_secret": DEVO_SECRET}
        return _config(upstream, signer=signer, max_concurrent=5)

    release = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'{"part": 1, '
        await release.wait()
        yield b'"last": true}'

    async with in_process_proxy(devo("key-old")) as proxy:
        old_route = proxy.handler.runtime.table.routes[0]
        pending = asyncio.ensure_future(proxy.client.post("/r/x", data=body()))
        for _ in range(200):
            if old_route.limits.in_flight == 1:
                break
            await asyncio.sleep(0.01)
        assert old_route.limits.in_flight == 1  # the handler holds the request
        new_runtime = Runtime.build(parse_config(yaml.safe_dump(devo("key-new"))))
        proxy.handler.runtime = new_runtime  # the reload's atomic swap
        fresh = await proxy.client.post("/r/x", data=b"{}")
        assert _sent_headers(await fresh.json())["x-logtrust-reseller-apikey"] == "key-new"
        release.set()
        old = await pending
        old_sent = _sent_headers(await old.json())
    assert old_sent["x-logtrust-reseller-apikey"] == "key-old"
    assert old_route.limits.in_flight == 0  # its slot went back to the route it came from
    assert new_runtime.table.routes[0].limits.in_flight == 0
