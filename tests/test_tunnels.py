"""CONNECT tunnels on the wire (issues 12.3 and 18): what is answered 200, what is refused and
in which order, and what happens to the requests inside. The request path runs in this process
(`in_process_proxy`, asyncio's own loop and aiohttp's C parser); tests/test_tunnel_clients.py
drives `signing-proxy run` (uvloop, and the Python parser) with real clients."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from proxy.interception.ca import create_ca
from tests.support import InProcessProxy, Upstream, in_process_proxy, running_upstream
from tests.tunnel_support import RawRecorder, TunnelClient, trusting

TLS_RECORD = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)  # a ClientHello's start


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca")
    create_ca(directory)
    return directory


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


def _config(upstream: Upstream, ca_dir: Path | None, **extra: Any) -> dict[str, Any]:
    def bearer(token: str) -> dict[str, str]:
        return {"scheme": "bearer", "token": token}

    routes: list[dict[str, Any]] = [
        {"name": "plain", "match": {"host": "api.plain.test"}, "signer": bearer("plain-token")},
        {
            "name": "vendor",
            "match": {"host": "api.vendor.test", "path_prefix": "/v1"},
            "intercept": True,
            "signer": bearer("vendor-token"),
        },
        {  # the same host, not intercepting: reachable in forward mode only
            "name": "vendor-other",
            "match": {"host": "api.vendor.test", "path_prefix": "/v2"},
            "signer": bearer("other-token"),
        },
        {"name": "wild", "match": {"host": "*.wild.test"}, "intercept": True},
        {"name": "porty", "match": {"host": "api.port.test:8443"}, "intercept": True},
        {"name": "ip", "match": {"host": "127.0.0.1:8443"}, "intercept": True},
    ]
    for route in routes:
        route.setdefault("signer", bearer(f"{route['name']}-token"))
        route["upstream"] = upstream.url
        if ca_dir is None:
            route.pop("intercept", None)
    config: dict[str, Any] = {"routes": routes, **extra}
    if ca_dir is not None:
        config["interception"] = {
            "ca_cert": {"file": str(ca_dir / "ca.crt")},
            "ca_key": {"file": str(ca_dir / "ca.key")},
        }
    return config


@asynccontextmanager
async def _proxy(
    upstream: Upstream, ca_dir: Path | None, **extra: Any
) -> AsyncIterator[InProcessProxy]:
    upstream.seen.clear()
    async with in_process_proxy(_config(upstream, ca_dir, **extra)) as proxy:
        yield proxy


async def _client(proxy: InProcessProxy) -> TunnelClient:
    assert proxy.client.port is not None
    return await TunnelClient.open(proxy.client.port)


def _metric(proxy: InProcessProxy, name: str, **labels: str) -> float:
    text = proxy.scrape()
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _wait_for(predicate: Any, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- CONNECT host:80: a plain tunnel --------------------------------------------------------


@pytest.mark.smoke  # also on the lowest dependency versions
async def test_a_plain_tunnel_signs_every_request_like_forward_mode(
    upstream: Upstream, ca_dir: Path
) -> None:
    async with _proxy(upstream, ca_dir) as proxy:
        client = await _client(proxy)
        assert (await client.connect("api.plain.test:80")).status == 200
        first = await client.request("GET", "/a?x=1", host="api.plain.test")
        second = await client.request("POST", "/b", body=b'{"n":2}', host="api.plain.test:80")
        absolute = await client.request("GET", "http://api.plain.test/c", host="api.plain.test")
        # HTTP/1.0 may leave Host out (1.1 may not: the parser answers 400): the CONNECT
        # target routes it.
        no_host = await client.request("GET", "/d", {"Connection": "keep-alive"}, version="1.0")
        assert [a.status for a in (first, second, absolute, no_host)] == [200] * 4
        assert [s.raw_path for s in upstream.seen] == ["/a?x=1", "/b", "/c", "/d"]
        assert {s.headers["Authorization"] for s in upstream.seen} == {"Bearer plain-token"}
        assert upstream.seen[1].body == b'{"n":2}'
        # Another authority inside the tunnel: 421, nothing forwarded; the tunnel stays.
        other = await client.request("GET", "/e", host="api.vendor.test")
        assert (other.status, b"misdirected_request" in other.body) == (421, True)
        other = await client.request("GET", "http://api.plain.test:8080/e", host="x")
        assert other.status == 421
        assert len(upstream.seen) == 4
        assert (await client.request("GET", "/f", host="api.plain.test")).status == 200
        # No tunnel in a tunnel.
        refused = await client.request("CONNECT", "api.plain.test:80", host="api.plain.test")
        assert refused.status == 405
        assert await client.closed_by_peer()
        await _wait_for(lambda: _metric(proxy, "signing_proxy_tunnels_open") == 0)
        assert (
            _metric(proxy, "signing_proxy_requests_total", route="plain", method="GET", code="200")
            == 4
        )
        assert _metric(proxy, "signing_proxy_requests_total", route="plain", method="POST") == 1
        assert (
            _metric(proxy, "signing_proxy_tunnels_opened_total", route="plain", scheme="http") == 1
        )
        assert _metric(proxy, "signing_proxy_tunnels_closed_total", route="plain") == 1


async def test_without_interception_only_port_80_is_a_tunnel(upstream: Upstream) -> None:
    async with _proxy(upstream, None) as proxy:
        for authority, status, code in (
            ("api.vendor.test:443", 405, b"connect_not_supported"),
            ("api.plain.test:8080", 405, b"connect_not_supported"),
            ("unrouted.test:80", 403, b"no_route"),
        ):
            client = await _client(proxy)
            answer = await client.connect(authority)
            assert (answer.status, code in answer.body) == (status, True), authority
            assert await client.closed_by_peer()
        client = await _client(proxy)
        assert (await client.connect("api.vendor.test:80")).status == 200
        assert (await client.request("GET", "/v2/x", host="api.vendor.test")).status == 200
        assert upstream.seen[-1].headers["Authorization"] == "Bearer other-token"
        client.close()


# --- CONNECT host:443 for an intercepting route ---------------------------------------------


@pytest.mark.smoke  # also on the lowest dependency versions
async def test_an_intercepted_tunnel_signs_inside_tls(upstream: Upstream, ca_dir: Path) -> None:
    async with _proxy(upstream, ca_dir) as proxy:
        client = await _client(proxy)
        assert (await client.connect("api.vendor.test:443")).status == 200
        await client.start_tls(trusting(ca_dir / "ca.crt"), "api.vendor.test")
        ssl_object = client.writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        leaf = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert list(san) == [x509.DNSName("api.vendor.test")]
        one = await client.request("GET", "/v1/items?q=1", host="api.vendor.test")
        two = await client.request(
            "PUT", "/v1/items/2", body=b"x" * 1000, host="api.vendor.test:443"
        )
        three = await client.request(
            "GET", "/v1/three", {"Connection": "keep-alive"}, version="1.0"
        )
        assert [a.status for a in (one, two, three)] == [200, 200, 200]
        # (the route's path_prefix /v1 is stripped, as in forward mode)
        assert [s.raw_path for s in upstream.seen] == ["/items?q=1", "/items/2", "/three"]
        assert {s.headers["Authorization"] for s in upstream.seen} == {"Bearer vendor-token"}
        # The same host's non-intercepting route takes no tunnel request.
        other = await client.request("GET", "/v2/x", host="api.vendor.test")
        assert (other.status, b"no_route" in other.body) == (403, True)
        misdirected = await client.request("GET", "/v1/x", host="api.vendor.test:8443")
        assert misdirected.status == 421
        assert len(upstream.seen) == 3
        client.close()
        await _wait_for(lambda: _metric(proxy, "signing_proxy_tunnels_open") == 0)
        assert (
            _metric(proxy, "signing_proxy_tunnels_opened_total", route="vendor", scheme="https")
            == 1
        )
        assert _metric(proxy, "signing_proxy_requests_total", route="vendor", code="200") == 2
        assert _metric(proxy, "signing_proxy_requests_total", route="vendor", method="PUT") == 1


async def test_wildcard_ip_and_port_routes(upstream: Upstream, ca_dir: Path) -> None:
    async with _proxy(upstream, ca_dir) as proxy:
        seen_sans = []
        for authority, sni in (
            ("a.wild.test:443", "a.wild.test"),
            ("b.c.wild.test:443", "b.c.wild.test"),
            ("api.port.test:8443", "api.port.test"),
            ("127.0.0.1:8443", None),  # no SNI for an IP address
        ):
            client = await _client(proxy)
            assert (await client.connect(authority)).status == 200, authority
            await client.start_tls(trusting(ca_dir / "ca.crt"), sni or "127.0.0.1")
            der = client.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
            seen_sans.append(next(iter(san.value)))
            host = authority if not authority.endswith(":443") else authority[:-4]
            assert (await client.request("GET", "/p", host=host)).status == 200
            client.close()
        assert seen_sans == [
            x509.DNSName("a.wild.test"),
            x509.DNSName("b.c.wild.test"),
            x509.DNSName("api.port.test"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        # A route whose match.host names a port is intercepted on that port only, and one
        # that names none only on 443.
        for authority in ("api.port.test:443", "a.wild.test:8443", "api.vendor.test:8443"):
            client = await _client(proxy)
            assert (await client.connect(authority)).status == 403, authority
            client.close()


async def test_no_sni_client_gets_the_connect_hosts_certificate(
    upstream: Upstream, ca_dir: Path
) -> None:
    async with _proxy(upstream, ca_dir) as proxy:
        client = await _client(proxy)
        assert (await client.connect("api.vendor.test:443")).status == 200
        context = trusting(ca_dir / "ca.crt")
        context.check_hostname = False  # no SNI is sent without a server_hostname
        await client.start_tls(context, None)
        assert (await client.request("GET", "/v1/no-sni", host="api.vendor.test")).status == 200
        client.close()


# --- refusals -------------------------------------------------------------------------------


async def test_every_other_connect_is_refused_and_nothing_is_reached(
    upstream: Upstream, ca_dir: Path
) -> None:
    recorder = RawRecorder()
    with recorder.running():
        async with _proxy(upstream, ca_dir) as proxy:
            for authority in (
                f"127.0.0.1:{recorder.port}",  # unrouted, and listening
                "unrouted.test:443",
                "api.plain.test:443",  # routed, but not intercepting
                "unrouted.test:80",
            ):
                client = await _client(proxy)
                answer = await client.connect(authority)
                assert (answer.status, b"no_route" in answer.body) == (403, True), authority
                assert await client.closed_by_peer()
            bad = await _client(proxy)
            assert (await bad.connect("no-port-here")).status == 400
            assert _metric(proxy, "signing_proxy_errors_total", code="no_route") == 4
            assert _metric(proxy, "signing_proxy_tunnels_opened_total") == 0
    assert (recorder.connections, bytes(recorder.received)) == (0, b"")
    assert upstream.seen == []


@pytest.mark.smoke  # also on the lowest dependency versions
async def test_bytes_before_the_200_are_refused(upstream: Upstream, ca_dir: Path) -> None:
    async with _proxy(upstream, ca_dir) as proxy:
        for authority, early in (
            ("api.vendor.test:443", TLS_RECORD),
            ("api.plain.test:80", b"GET /a HTTP/1.1\r\nHost: api.plain.test\r\n\r\n"),
        ):
            client = await _client(proxy)
            answer = await client.connect(authority, extra=early)
            assert (answer.status, b"early_tunnel_data" in answer.body) == (400, True)
            assert await client.closed_by_peer()
        assert upstream.seen == []
        assert _metric(proxy, "signing_proxy_tunnels_opened_total") == 0


async def test_refusal_order_access_then_route_then_bytes_then_capacity(
    upstream: Upstream, ca_dir: Path
) -> None:
    token = "tunnel-token-1"
    basic = base64.b64encode(f"app:{token}".encode()).decode()
    auth = {"Proxy-Authorization": f"Basic {basic}"}
    access = {"proxy_token": token}
    async with _proxy(upstream, ca_dir, access=access, tunnels={"max_open": 1}) as proxy:

        async def refusal(authority: str, headers: dict[str, str], extra: bytes = b"") -> int:
            client = await _client(proxy)
            answer = await client.connect(authority, headers, extra)
            assert await client.closed_by_peer()
            return answer.status

        # access first: even an unrouted target with early bytes is a 407.
        assert await refusal("unrouted.test:443", {}, TLS_RECORD) == 407
        # then the route, then the early bytes.
        assert await refusal("unrouted.test:443", auth, TLS_RECORD) == 403
        assert await refusal("api.vendor.test:443", auth, TLS_RECORD) == 400
        # Access is checked on the CONNECT and inherited: no token inside the tunnel.
        held = await _client(proxy)
        assert (await held.connect("api.plain.test:80", auth)).status == 200
        assert (await held.request("GET", "/in", host="api.plain.test")).status == 200
        assert "Proxy-Authorization" not in upstream.seen[-1].headers
        # The one tunnel allowed is open: early bytes still win over capacity, then 503.
        assert await refusal("api.vendor.test:443", auth, TLS_RECORD) == 400
        assert await refusal("api.vendor.test:443", auth) == 503
        assert _metric(proxy, "signing_proxy_errors_total", code="too_many_tunnels") == 1
        held.close()
        await _wait_for(lambda: _metric(proxy, "signing_proxy_tunnels_open") == 0)
        again = await _client(proxy)
        assert (await again.connect("api.vendor.test:443", auth)).status == 200
        again.close()


# --- handshake failures and timeouts --------------------------------------------------------


async def _failed_handshake(
    proxy: InProcessProxy, context: ssl.SSLContext, sni: str | None, authority: str
) -> None:
    client = await _client(proxy)
    assert (await client.connect(authority)).status == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await client.start_tls(context, sni)
    client.close()


async def test_a_client_that_does_not_trust_the_ca_forwards_nothing(
    upstream: Upstream, ca_dir: Path
) -> None:
    async with _proxy(upstream, ca_dir) as proxy:
        await _failed_handshake(proxy, trusting(None), "api.vendor.test", "api.vendor.test:443")
        await _wait_for(
            lambda: _metric(proxy, "signing_proxy_tunnel_handshake_failures_total") == 1
        )
        reasons = {"untrusted_certificate", "client_closed"}  # the alert, or the close first
        assert (
            sum(
                _metric(proxy, "signing_proxy_tunnel_handshake_failures_total", reason=r)
                for r in reasons
            )
            == 1
        )
        assert (
            _metric(
                proxy,
                "signing_proxy_tunnels_closed_total",
                route="vendor",
                reason="handshake_failed",
            )
            == 1
        )
        assert upstream.seen == []


async def test_an_sni_for_another_host_fails_the_handshake(
    upstream: Upstream, ca_dir: Path
) -> None:
    async with _proxy(upstream, ca_dir) as proxy:
        context = trusting(ca_dir / "ca.crt")
        context.check_hostname = False
        await _failed_handshake(proxy, context, "api.plain.test", "api.vendor.test:443")
        await _wait_for(
            lambda: (
                _metric(
                    proxy, "signing_proxy_tunnel_handshake_failures_total", reason="sni_mismatch"
                )
                == 1
            )
        )
        assert upstream.seen == []


async def test_handshake_and_idle_timeouts(upstream: Upstream, ca_dir: Path) -> None:
    tunnels = {"handshake_timeout": 0.3, "idle_timeout": 0.5}
    async with _proxy(upstream, ca_dir, tunnels=tunnels) as proxy:
        silent = await _client(proxy)
        assert (await silent.connect("api.vendor.test:443")).status == 200
        assert await silent.closed_by_peer(5)
        await _wait_for(
            lambda: (
                _metric(proxy, "signing_proxy_tunnel_handshake_failures_total", reason="timeout")
                == 1
            )
        )
        idle = await _client(proxy)
        assert (await idle.connect("api.plain.test:80")).status == 200
        assert (await idle.request("GET", "/x", host="api.plain.test")).status == 200
        assert await idle.closed_by_peer(5)
        await _wait_for(
            lambda: (
                _metric(
                    proxy,
                    "signing_proxy_tunnels_closed_total",
                    route="plain",
                    reason="idle_timeout",
                )
                == 1
            )
        )


async def test_plain_http_into_an_intercepted_tunnel_is_a_failed_handshake(
    upstream: Upstream, ca_dir: Path
) -> None:
    async with _proxy(upstream, ca_dir) as proxy:
        client = await _client(proxy)
        assert (await client.connect("api.vendor.test:443")).status == 200
        client.writer.write(b"GET /v1/x HTTP/1.1\r\nHost: api.vendor.test\r\n\r\n")
        assert await client.closed_by_peer()
        await _wait_for(
            lambda: (
                _metric(proxy, "signing_proxy_tunnel_handshake_failures_total", reason="protocol")
                == 1
            )
        )
        assert upstream.seen == []


async def test_a_client_outside_allow_networks_gets_no_tunnel(
    upstream: Upstream, ca_dir: Path
) -> None:
    access = {"allow_networks": ["10.0.0.0/8"]}
    async with _proxy(upstream, ca_dir, access=access) as proxy:
        for authority in ("api.plain.test:80", "api.vendor.test:443"):
            client = await _client(proxy)
            answer = await client.connect(authority)
            assert (answer.status, b"client_not_allowed" in answer.body) == (403, True)
            assert await client.closed_by_peer()
        assert _metric(proxy, "signing_proxy_tunnels_opened_total") == 0
        assert upstream.seen == []
