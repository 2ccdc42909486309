"""CONNECT tunnels whose requests are signed: never an open tunnel, never a passthrough.

Two kinds are answered `200`; every other CONNECT is refused:
- `CONNECT host:80` for a host a route names (what undici and some Java clients send for an
  `http://` URL through a proxy): the connection then carries plain HTTP requests;
- `CONNECT host:443` (or the port `match.host` names) for a route with `intercept: true`: the
  connection is upgraded to TLS under a host certificate minted from the operator's CA
  (`proxy.interception`), and carries HTTPS requests.

Either way the requests inside are parsed by a fresh aiohttp request handler (the protocol a
new connection would get, `proxy.aiohttp_internals`) and handled by the proxy's own handler:
routed by the CONNECT authority, limited, signed, forwarded, logged and counted exactly like
forward-proxy requests. The access check is made on the CONNECT and inherited. A request that
names another authority is a 421.

Refusals, in this order: access (403/407), no route (403; a 405 for ports other than 80 while
no route intercepts), bytes sent before the 200 (400), too many open tunnels (503). Each closes
the connection. The CONNECT itself is not an access-log request: a tunnel gets one log line
when it closes (host, duration, requests, bytes, close reason).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import web

from proxy.access import AccessPolicy
from proxy.admission import Authority, BadAuthority, check_request, split_host_port
from proxy.aiohttp_internals import (
    connect_bytes_pending,
    server_of,
    set_keepalive_timeout,
)
from proxy.config import Config
from proxy.errors import ProxyError
from proxy.interception.config import TunnelsConfig
from proxy.logs import get_logger
from proxy.metrics import TunnelMetrics
from proxy.routing import (
    RequestTarget,
    Route,
    RouteMatch,
    RouteTable,
    takes_tunnel,
)

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

    from proxy.interception.leaves import LeafStore


class Runtime(Protocol):
    """What a tunnel needs of `proxy.app.Runtime` (the config load a request runs under)."""

    @property
    def config(self) -> Config: ...
    @property
    def table(self) -> RouteTable: ...
    @property
    def access(self) -> AccessPolicy | None: ...
    @property
    def leaves(self) -> LeafStore | None: ...
    @property
    def intercepts(self) -> bool: ...


log = get_logger("signing_proxy")

ESTABLISHED: Final = b"HTTP/1.1 200 Connection established\r\n\r\n"
PLAIN_PORT: Final = 80
TLS_PORT: Final = 443
TLS_CLOSE_TIMEOUT: Final = 2.0  # seconds a TLS close (close_notify) may take before an abort
_NOT_INTERCEPTED: Final = (
    "CONNECT is answered only for port 80 of a routed host (a plain tunnel whose requests the "
    "proxy signs) or, with HTTPS interception, for a route with intercept: true. Send plain "
    "http:// URLs through the proxy (HTTP_PROXY); it speaks TLS to the upstream."
)


@dataclass(frozen=True, slots=True)
class TunnelPlan:
    """What an accepted CONNECT becomes."""

    host: str  # lower case; an IPv6 literal keeps its brackets
    port: int
    route: Route  # the first route that takes the tunnel (for its log line and metrics)
    intercepted: bool

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def plan_connect(request: web.BaseRequest, runtime: Runtime, open_tunnels: int) -> TunnelPlan:
    """Decide a CONNECT, or raise the ProxyError of its refusal (in the documented order)."""
    if runtime.access is not None:
        runtime.access.check(request.remote, request.headers.get("Proxy-Authorization"))
    check_request(request)  # target bytes, framing, Host (proxy/admission.py)
    host, port = parse_authority(request.raw_path)
    table = runtime.table
    intercepted = port != PLAIN_PORT
    if intercepted and not runtime.intercepts:
        raise ProxyError(405, "connect_not_supported", _NOT_INTERCEPTED, close=True)
    route = next(
        (r for r in table.routes if takes_tunnel(r, host, port, intercepted=intercepted)), None
    )
    if route is None:
        kind = "an intercepting route" if intercepted else "a route"
        raise ProxyError(
            403,
            "no_route",
            f"no {kind} matches CONNECT {host}:{port}; this proxy only opens tunnels whose "
            "requests it signs",
            close=True,
        )
    if connect_bytes_pending(request) or _declares_body(request):
        raise ProxyError(
            400,
            "early_tunnel_data",
            "bytes were sent after CONNECT before the proxy answered it; wait for the 200",
            close=True,
        )
    if open_tunnels >= runtime.config.tunnels.max_open:
        raise ProxyError(
            503, "too_many_tunnels", "the proxy has its tunnels.max_open tunnels open", close=True
        )
    return TunnelPlan(host, port, route, intercepted)


def _declares_body(request: web.BaseRequest) -> bool:
    """A CONNECT with framing for a body: its "body" would be the tunnel's first bytes."""
    headers = request.headers
    return "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0"


def parse_authority(target: str) -> tuple[str, int]:
    """A CONNECT target (`host:port`, `[v6]:port`) -> (host, port); 400 for anything else."""
    invalid = ProxyError(
        400, "invalid_target", "CONNECT needs host:port, e.g. api.example.com:443", close=True
    )
    try:
        host, port = split_host_port(target.strip().lower())
    except BadAuthority:
        raise invalid from None
    host = host.rstrip(".")
    if port is None or not host or "/" in host or "@" in host:
        raise invalid
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ProxyError(400, "invalid_target", "not an IPv6 address", close=True) from None
    return host, port


@dataclass(eq=False)
class Tunnel:
    """One accepted CONNECT: what its log line and metrics report."""

    plan: TunnelPlan
    client: str | None
    started: float = field(default_factory=time.perf_counter)
    requests: int = 0
    in_flight: int = 0
    bytes_in: int = 0  # request bodies sent upstream
    bytes_out: int = 0  # response bodies sent back
    close_reason: str | None = None
    handshake_error: str | None = None
    connection: TunnelConnection | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.plan.intercepted else "http"

    def route_request(
        self, runtime: Runtime, target: RequestTarget, host: str | None, authority: Authority | None
    ) -> RouteMatch:
        """The route of a request inside this tunnel: by the CONNECT authority, which its
        `Host` (or absolute-form target) must name; a missing `Host` takes the authority.
        `authority` is the `Host` header `host` as admission parsed it (`check_host`)."""
        plan = self.plan
        named = target.host or host
        if named:
            scheme = target.scheme or self.scheme
            if target.host is None and authority is not None:
                named_host, named_port = authority
            else:
                try:
                    named_host, named_port = split_host_port(named.strip().lower())
                except BadAuthority:
                    raise ProxyError(400, "invalid_host", f"cannot route {named!r}") from None
            default = TLS_PORT if scheme == "https" else PLAIN_PORT
            if (named_host.rstrip("."), named_port or default) != (plan.host, plan.port):
                raise ProxyError(
                    421,
                    "misdirected_request",
                    f"this tunnel is to {plan.authority}; the request names {named}",
                )
        match = runtime.table.match_tunnel(
            target.path, plan.host, plan.port, intercepted=plan.intercepted
        )
        if match is None:
            raise ProxyError(
                403,
                "no_route",
                f"no route of this tunnel to {plan.authority} matches path {target.path!r}",
            )
        return match

    def log_fields(self) -> dict[str, object]:
        plan = self.plan
        return {
            "route": plan.route.name,
            "host": plan.host,
            "port": plan.port,
            "scheme": self.scheme,
            "client": self.client,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "close_reason": self.close_reason,
            "handshake_error": self.handshake_error,
        }


class TunnelConnection(asyncio.Protocol):
    """The tunnel's transport protocol: the aiohttp request handler that parses the requests
    inside, with the tunnel's idle timer and the notice of its end in front of it."""

    def __init__(self, tunnel: Tunnel, handler: RequestHandler, idle_timeout: float) -> None:
        self.tunnel = tunnel
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.last_activity = self.loop.time()
        self._idle = self.loop.call_at(self.last_activity + idle_timeout, self._check_idle)
        self._draining = False

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()  # type: ignore[func-returns-value]

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle.cancel()
        if self.tunnel.close_reason is None:
            self.tunnel.close_reason = "error" if exc is not None else "closed"
        self.handler.connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def request_done(self) -> None:
        """A request inside ended: the idle time counts from now; a draining tunnel closes."""
        self.last_activity = self.loop.time()
        if self._draining and self.tunnel.in_flight == 0:
            self.close("shutdown")

    def drain(self) -> None:
        """Shutdown: close now if idle, else once the request in progress is answered."""
        self._draining = True
        if self.tunnel.in_flight == 0:
            self.close("shutdown")

    def close(self, reason: str) -> None:
        if self.tunnel.close_reason is None:
            self.tunnel.close_reason = reason
        self.handler.force_close()  # a TLS close is bounded by TLS_CLOSE_TIMEOUT

    def _check_idle(self) -> None:
        due = self.last_activity + self.idle_timeout
        if self.tunnel.in_flight == 0 and self.loop.time() >= due:
            self.close("idle_timeout")
        else:
            self._idle = self.loop.call_at(max(due, self.loop.time() + 1), self._check_idle)


class _HandshakeBuffer(asyncio.Protocol):
    """The TLS transport's protocol during the handshake: keeps what arrives before the
    request handler takes over (the loop may deliver the first request before `start_tls`
    returns)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def data_received(self, data: bytes) -> None:
        self.data += data


class TunnelManager:
    """The open tunnels of a proxy port: opening, bounding, draining, counting."""

    def __init__(self, metrics: TunnelMetrics) -> None:
        self.metrics = metrics
        self._by_handler: dict[object, Tunnel] = {}
        self._open: set[Tunnel] = set()
        self._draining = False

    @property
    def open_count(self) -> int:
        return len(self._open)

    def of(self, request: web.BaseRequest) -> Tunnel | None:
        """The tunnel a request arrived in, or None for a request on its own connection."""
        return self._by_handler.get(request.protocol) if self._by_handler else None

    def drain(self) -> None:
        """Shutdown: no more tunnels; idle ones close now, busy ones after their request."""
        self._draining = True
        for tunnel in list(self._open):
            if tunnel.connection is not None:
                tunnel.connection.drain()

    async def open(
        self, request: web.BaseRequest, plan: TunnelPlan, runtime: Runtime
    ) -> web.StreamResponse:
        """Answer 200, take the connection over and serve it until it closes."""
        config: TunnelsConfig = runtime.config.tunnels
        transport = request.transport
        assert transport is not None
        tunnel = Tunnel(plan, request.remote)
        route = plan.route.name
        self._open.add(tunnel)
        self.metrics.opened.labels(route, tunnel.scheme).inc()
        self.metrics.open.set(len(self._open))
        handler: RequestHandler | None = None
        try:
            transport.write(ESTABLISHED)
            active: asyncio.Transport = transport
            pending = bytearray()
            if plan.intercepted:
                tls = await self._intercept(tunnel, transport, runtime)
                if tls is None:
                    return _never_sent()
                active, pending = tls
            handler = self._attach(request, tunnel, active, pending, config)
            assert tunnel.connection is not None
            await asyncio.shield(tunnel.connection.closed)
        except asyncio.CancelledError:
            # The server's shutdown gave up waiting: cut the tunnel.
            tunnel.close_reason = tunnel.close_reason or "shutdown"
            if tunnel.connection is not None:
                tunnel.connection.close("shutdown")
            transport.abort()
            raise
        except Exception as err:  # a bug of ours: the 200 is out, so only the connection can go
            log.error("tunnel_failed", route=route, error_type=type(err).__name__)
            tunnel.close_reason = "error"
            transport.abort()
        finally:
            if handler is not None:
                self._by_handler.pop(handler, None)
            self._open.discard(tunnel)
            self.metrics.open.set(len(self._open))
            self.metrics.closed.labels(route, tunnel.close_reason or "closed").inc()
            log.info("tunnel", **tunnel.log_fields())
        return _never_sent()

    def _attach(
        self,
        request: web.BaseRequest,
        tunnel: Tunnel,
        transport: asyncio.Transport,
        pending: bytearray,
        config: TunnelsConfig,
    ) -> RequestHandler:
        """Give the connection a request handler of its own, as if it had just been accepted
        (`pending`: what arrived during the TLS handshake)."""
        handler = server_of(request)()
        set_keepalive_timeout(handler, config.idle_timeout + 5)
        connection = TunnelConnection(tunnel, handler, config.idle_timeout)
        tunnel.connection = connection
        self._by_handler[handler] = tunnel
        transport.set_protocol(connection)
        handler.connection_made(transport)
        if pending:
            connection.data_received(bytes(pending))
        if self._draining:
            connection.drain()
        return handler

    async def _intercept(
        self, tunnel: Tunnel, transport: asyncio.Transport, runtime: Runtime
    ) -> tuple[asyncio.Transport, bytearray] | None:
        """TLS under the host's certificate (minted or renewed now if it must be)."""
        assert runtime.leaves is not None
        host = tunnel.plan.host.strip("[]")
        context = runtime.leaves.context_for(host)
        if (expiry := runtime.leaves.not_after(host)) is not None:
            self.metrics.leaf_expiry.labels(tunnel.plan.route.name).set(expiry)
        return await self._handshake(tunnel, transport, context, runtime.config.tunnels)

    async def _handshake(
        self,
        tunnel: Tunnel,
        transport: asyncio.Transport,
        context: ssl.SSLContext,
        config: TunnelsConfig,
    ) -> tuple[asyncio.Transport, bytearray] | None:
        """The client's TLS handshake, under the host's certificate. None when it failed
        (counted by reason; the connection is closed; nothing was forwarded)."""
        buffer = _HandshakeBuffer()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                buffer,
                context,
                server_side=True,
                ssl_handshake_timeout=config.handshake_timeout,
                ssl_shutdown_timeout=TLS_CLOSE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError) as err:
            reason = handshake_failure_reason(err)
            tunnel.close_reason, tunnel.handshake_error = "handshake_failed", reason
            self.metrics.handshake_failures.labels(tunnel.plan.route.name, reason).inc()
            transport.abort()
            return None
        if tls is None:  # the loop's contract allows it when the transport closed meanwhile
            tunnel.close_reason = "closed"
            return None
        return tls, buffer.data


def target_for_log(raw_target: str) -> str:
    """A CONNECT's target as its log line names it: `host:port` once it parses (never the
    bytes of one that does not)."""
    try:
        host, port = parse_authority(raw_target)
    except ProxyError:
        return ""
    return f"{host}:{port}"


def handshake_failure_reason(err: BaseException) -> str:
    """A low-cardinality reason for a failed TLS handshake of a tunnel's client."""
    if isinstance(err, ssl.SSLError):
        from proxy.interception.leaves import SNI_REFUSED_REASON  # with interception only

        reason = (err.reason or "").upper()
        if reason == SNI_REFUSED_REASON:
            return "sni_mismatch"
        if any(part in reason for part in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")):
            return "untrusted_certificate"
        if "EOF" in reason:
            return "client_closed"
        if any(
            part in reason
            for part in ("WRONG_VERSION", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "UNSUPPORTED")
        ):
            return "protocol"
        return "tls_error"
    if isinstance(err, TimeoutError) or "taking longer" in str(err):
        return "timeout"  # asyncio and uvloop: ConnectionAbortedError "...taking longer than"
    if isinstance(err, ConnectionError | EOFError):
        return "client_closed"
    return "tls_error"


def _never_sent() -> web.Response:
    # The connection belongs to the tunnel (now closed); aiohttp's handler of the CONNECT finds
    # it closed and sends nothing. Returning, not raising, keeps a traceback out of the log.
    return web.Response()
