"""`oauth2-client-credentials` against an in-process fake token endpoint, for the fault cases a
real authorization server will not produce on demand: slow, 500, malformed JSON, no
`expires_in`, a token that lives 1 s, concurrent first requests, a token the upstream refuses.
The real server (pytest-iam) is in test_oauth2_iam.py."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import pytest
import requests
import yaml
from aiohttp import web

from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream

CLIENT_ID = "proxy client/1"
CLIENT_SECRET = "s3cret:with&odd=chars+"


@dataclass
class TokenEndpoint:
    """A token endpoint whose answers the test chooses; records what it was sent."""

    upstream: Upstream
    mode: str = "ok"
    delay: float = 0.0
    expires_in: Any = 3600
    token_type: str = "Bearer"
    issued: dict[str, float] = field(default_factory=dict)  # token -> when it was issued
    requests: list[dict[str, Any]] = field(default_factory=list)
    counter: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return f"{self.upstream.url}/oauth/token"

    async def handle(self, request: web.BaseRequest) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode()))
        self.requests.append({"form": form, "authorization": request.headers.get("Authorization")})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "500":
            return web.json_response({"error": "server_error"}, status=500)
        if self.mode == "malformed":
            return web.Response(text='{"access_token": "tok', content_type="application/json")
        if self.mode == "invalid_client":
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"tok-{next(self.counter)}-Vx9"
        self.issued[token] = time.monotonic()
        answer: dict[str, Any] = {"access_token": token, "token_type": self.token_type}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return web.json_response(answer)


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    with running_upstream() as upstream:
        token_endpoint = TokenEndpoint(upstream)
        upstream.handlers["/oauth/token"] = token_endpoint.handle
        yield token_endpoint


class Api:
    """The upstream API: accepts a token the endpoint issued and that has not expired (the
    endpoint's `expires_in` from its own issue time), refuses `revoked` ones with 401."""

    def __init__(self, upstream: Upstream, endpoint: TokenEndpoint) -> None:
        self.upstream = upstream
        self.endpoint = endpoint
        self.revoked: set[str] = set()
        self.refuse_all = False
        self.tokens: list[str] = []
        self.expired: list[str] = []
        upstream.handlers["/"] = self.handle

    async def handle(self, request: web.BaseRequest) -> web.Response:
        await request.read()
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.tokens.append(token)
        issued = self.endpoint.issued.get(token)
        lifetime = self.endpoint.expires_in if isinstance(self.endpoint.expires_in, int) else 300
        if issued is None or token in self.revoked or self.refuse_all:
            return web.json_response({"error": "invalid_token"}, status=401)
        if time.monotonic() > issued + lifetime:
            self.expired.append(token)
            return web.json_response({"error": "expired"}, status=401)
        return web.json_response({"token": token})


@pytest.fixture
def api(endpoint: TokenEndpoint) -> Iterator[Api]:
    with running_upstream() as upstream:
        yield Api(upstream, endpoint)


def _config(api: Api, endpoint: TokenEndpoint, **signer: Any) -> dict[str, Any]:
    return {
        "routes": [
            {
                "name": "api",
                "match": {"path_prefix": "/api"},
                "upstream": api.upstream.url,
                "signer": {
                    "scheme": "oauth2-client-credentials",
                    "token_url": endpoint.url,
                    "client_id": CLIENT_ID,
                    "client_secret": {"env": "OAUTH_SECRET"},
                    "scope": "read write",
                    **signer,
                },
            },
            {
                "name": "plain",
                "match": {"path_prefix": "/plain"},
                "upstream": api.upstream.url,
                "signer": {"scheme": "header", "name": "X-Key", "value": "k"},
            },
        ]
    }


def _proxy(api: Api, endpoint: TokenEndpoint, tmp_path: Path, **signer: Any) -> ProxyProcess:
    return ProxyProcess(
        _config(api, endpoint, **signer), tmp_path, env={"OAUTH_SECRET": CLIENT_SECRET}
    )


def _wait_ready(proxy: ProxyProcess, timeout: float = 15) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = requests.get(f"{proxy.admin_url}/readyz", timeout=5)
        if answer.status_code == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def _metric(proxy: ProxyProcess, name: str) -> float | None:
    for line in requests.get(f"{proxy.admin_url}/metrics", timeout=5).text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_client_secret_basic_form_encodes_then_base64(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    proxy = _proxy(api, endpoint, tmp_path).start()
    try:
        assert _wait_ready(proxy).status_code == 200
        answer = requests.get(f"{proxy.url}/api/items", timeout=10)
        assert answer.status_code == 200
        assert api.tokens == ["tok-0-Vx9"]
    finally:
        proxy.stop()
    sent = endpoint.requests[0]
    assert sent["form"] == {"grant_type": "client_credentials", "scope": "read write"}
    scheme, _, encoded = sent["authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    assert (user, password) == ("proxy+client%2F1", "s3cret%3Awith%26odd%3Dchars%2B")
    assert (unquote_plus(user), unquote_plus(password)) == (CLIENT_ID, CLIENT_SECRET)


def test_client_secret_post_sends_the_credentials_as_form_fields(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    with running_proxy(
        _config(api, endpoint, auth_method="client_secret_post", extra_params={"x": "1"}),
        tmp_path,
        env={"OAUTH_SECRET": CLIENT_SECRET},
    ) as proxy:
        assert _wait_ready(proxy).status_code == 200
        assert requests.get(f"{proxy.url}/api/x", timeout=10).status_code == 200
    sent = endpoint.requests[0]
    assert sent["authorization"] is None
    assert sent["form"]["client_id"] == CLIENT_ID
    assert sent["form"]["client_secret"] == CLIENT_SECRET
    assert sent["form"]["x"] == "1"


def test_readyz_waits_for_the_first_token_and_concurrent_first_requests_share_one_fetch(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    endpoint.delay = 3.0  # slow, but within the token request timeout
    proxy = _proxy(api, endpoint, tmp_path).start()
    try:
        waiting = requests.get(f"{proxy.admin_url}/readyz", timeout=5)
        assert waiting.status_code == 503
        assert waiting.json()["routes"] == {"api": "the first access token is being fetched"}
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: requests.get(f"{proxy.url}/api/x", timeout=20), range(8))
            )
        assert [a.status_code for a in answers] == [200] * 8
        assert len(endpoint.requests) == 1  # single flight: one fetch for all of them
        assert set(api.tokens) == {"tok-0-Vx9"}
        assert _wait_ready(proxy).status_code == 200
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("mode", "token_type", "reason"),
    [
        ("500", "Bearer", "the token endpoint answered 500 (server_error)"),
        ("malformed", "Bearer", "the token endpoint's answer is not a JSON object"),
        ("invalid_client", "Bearer", "the token endpoint answered 401 (invalid_client)"),
        ("ok", "mac", "token_type 'mac' is not Bearer"),
    ],
)
def test_a_failing_token_endpoint_is_reported_then_recovered(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path, mode: str, token_type: str, reason: str
) -> None:
    endpoint.mode, endpoint.token_type = mode, token_type
    proxy = _proxy(api, endpoint, tmp_path).start()
    try:
        deadline = time.monotonic() + 10
        while not endpoint.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        ready = requests.get(f"{proxy.admin_url}/readyz", timeout=5)
        assert ready.status_code == 503
        expected = f"the first access token could not be fetched: {reason}"
        assert ready.json()["routes"] == {"api": expected}
        answer = requests.get(f"{proxy.url}/api/x", timeout=10)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "credentials_unavailable"
        assert requests.get(f"{proxy.url}/plain/x", timeout=10).status_code == 401  # no token
        assert api.tokens == [""]  # only the plain route reached the API
        endpoint.mode, endpoint.token_type = "ok", "Bearer"  # recovers: backoff 1, 2, 4 s...
        assert _wait_ready(proxy, timeout=20).status_code == 200
        assert requests.get(f"{proxy.url}/api/x", timeout=10).status_code == 200
        failures = _metric(
            proxy, 'signing_proxy_credential_refresh_total{result="error",route="api"}'
        )
        assert failures is not None
        assert failures >= 1
        proxy.stop()
        assert "tok-" not in proxy.logs()
        assert CLIENT_SECRET not in proxy.logs()
    finally:
        if proxy.process and proxy.process.poll() is None:
            proxy.stop()


def test_without_expires_in_a_token_lives_300_seconds(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    endpoint.expires_in = None
    with running_proxy(
        _config(api, endpoint), tmp_path, env={"OAUTH_SECRET": CLIENT_SECRET}
    ) as proxy:
        assert _wait_ready(proxy).status_code == 200
        expiry = _metric(proxy, 'signing_proxy_credential_expiry_timestamp_seconds{route="api"}')
        assert expiry is not None
        assert time.time() + 280 < expiry <= time.time() + 300


def test_a_token_living_one_second_is_renewed_and_never_sent_expired(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    endpoint.expires_in = 1
    with running_proxy(
        _config(api, endpoint), tmp_path, env={"OAUTH_SECRET": CLIENT_SECRET}
    ) as proxy:
        assert _wait_ready(proxy).status_code == 200
        statuses = []
        with requests.Session() as session:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                statuses.append(session.get(f"{proxy.url}/api/x", timeout=10).status_code)
                time.sleep(0.02)
    assert api.expired == []
    assert set(statuses) == {200}
    assert len(set(api.tokens)) >= 3  # renewed in the background, about twice a second
    assert len(endpoint.requests) >= 4


def test_a_401_renews_the_token_and_replays_once(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    with running_proxy(
        _config(api, endpoint), tmp_path, env={"OAUTH_SECRET": CLIENT_SECRET}
    ) as proxy:
        assert _wait_ready(proxy).status_code == 200
        api.revoked.add("tok-0-Vx9")
        answer = requests.get(f"{proxy.url}/api/x", timeout=10)
        assert (answer.status_code, answer.json()) == (200, {"token": "tok-1-Vx9"})
        assert api.tokens == ["tok-0-Vx9", "tok-1-Vx9"]
        # The new token refused too: that answer is relayed, no second replay.
        api.refuse_all = True
        answer = requests.get(f"{proxy.url}/api/x", timeout=10)
        assert answer.status_code == 401
        assert api.tokens[2:] == ["tok-1-Vx9", "tok-2-Vx9"]
        api.refuse_all = False
        # A streamed body cannot be replayed: the 401 is relayed, the next request renews.
        api.revoked.add("tok-2-Vx9")

        def body() -> Iterator[bytes]:
            yield b"streamed"

        answer = requests.post(f"{proxy.url}/api/x", data=body(), timeout=10)
        assert answer.status_code == 401
        answer = requests.get(f"{proxy.url}/api/x", timeout=10)
        assert (answer.status_code, answer.json()) == (200, {"token": "tok-3-Vx9"})
        assert len(endpoint.requests) == 4
        retries = _metric(proxy, 'signing_proxy_retries_total{route="api"}')
        assert retries in (None, 0.0)  # not counted as `retries:` attempts


def test_a_changed_route_fetches_anew_at_reload_and_the_others_keep_their_token(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    config = _config(api, endpoint)
    second = dict(config["routes"][0], name="api2", match={"path_prefix": "/api2"})
    config["routes"].insert(0, second)
    with running_proxy(config, tmp_path, env={"OAUTH_SECRET": CLIENT_SECRET}) as proxy:
        assert _wait_ready(proxy).status_code == 200
        assert len(endpoint.requests) == 2
        second["signer"] = {**second["signer"], "scope": "other"}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        deadline = time.monotonic() + 10
        while len(endpoint.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _wait_ready(proxy).status_code == 200
        time.sleep(0.5)
        assert len(endpoint.requests) == 3
        assert endpoint.requests[2]["form"]["scope"] == "other"
        assert requests.get(f"{proxy.url}/api/x", timeout=10).json() == {"token": "tok-1-Vx9"}


def test_a_token_endpoint_slower_than_the_timeout_is_a_failure_then_recovers(
    api: Api, endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    endpoint.delay = 3.0
    proxy = _proxy(api, endpoint, tmp_path, timeout=0.5).start()
    try:
        deadline = time.monotonic() + 10
        reason = ""
        while "within" not in reason and time.monotonic() < deadline:
            time.sleep(0.1)
            reason = (
                requests.get(f"{proxy.admin_url}/readyz", timeout=5)
                .json()
                .get("routes", {})
                .get("api", "")
            )
        assert reason == (
            "the first access token could not be fetched: "
            "the token endpoint did not answer within 0.5 s"
        )
        assert requests.get(f"{proxy.url}/api/x", timeout=10).status_code == 503
        endpoint.delay = 0.0
        assert _wait_ready(proxy, timeout=20).status_code == 200
        assert requests.get(f"{proxy.url}/api/x", timeout=10).status_code == 200
    finally:
        proxy.stop()
