"""One request's way through the proxy: admit -> route -> read body -> sign -> forward -> relay.

Everything built from a config load lives in one immutable `Runtime`; a request takes the
runtime once when it arrives and keeps it to the end, so a reload (swap of the runtime) never
changes a request half-way. Every way out of the handler sets the answered status and an error
code, so the access log and the metrics see each request exactly once.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import HttpVersion10, HttpVersion11, web

from proxy.access import AccessPolicy
from proxy.admission import Authority, body_unread, check_request
from proxy.aiohttp_internals import end_connect_payload
from proxy.body import client_body_deadline
from proxy.clock import ClockSkew
from proxy.config import Config, setting_at
from proxy.errors import ProxyError, ResponseAborted, error_response
from proxy.exchange import Exchange
from proxy.forward import Forwarder, UpstreamResponse
from proxy.logs import access_log, get_logger
from proxy.metrics import Metrics, TunnelMetrics
from proxy.relay import relay
from proxy.request import read_request
from proxy.routing import RequestTarget, Route, RouteMatch, RouteTable, TargetError, parse_target
from proxy.signers import (
    CredentialsUnavailable,
    OnCredentialRefresh,
    SigningContext,
    SigningRefused,
    UpstreamRequest,
    build_signer,
)
from proxy.tunnel import Tunnel, TunnelManager, plan_connect, target_for_log

if TYPE_CHECKING:
    from proxy.interception.leaves import LeafStore

log = get_logger("signing_proxy")

_HTTP_1: Final = frozenset({HttpVersion10, HttpVersion11})
_CONNECT_IN_TUNNEL: Final = "a CONNECT inside a tunnel is refused"
# The status of a request whose client went away before any answer (nginx's convention):
# what the metrics and the access log count it as, never a status 0.
CLIENT_CLOSED_STATUS: Final = 499
# The status counted and logged for a request the shutdown cut before any answer: the server
# was unavailable to it (nothing is sent; the connection closes).
SHUTDOWN_CUT_STATUS: Final = 503


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything built from one config load: the routes (each with its signer, upstream
    settings, limits and retry policy), the access policy and, with HTTPS interception, the
    host certificates (minted at each load)."""

    config: Config
    table: RouteTable
    access: AccessPolicy | None
    leaves: LeafStore | None = None
    intercepts: bool = False  # some route has intercept: true

    @classmethod
    def build(
        cls,
        config: Config,
        on_refresh_for: Callable[[str], OnCredentialRefresh] | None = None,
        previous: Runtime | None = None,
    ) -> Runtime:
        """Raises `InvalidSetting` naming the key of a setting that cannot be used; call it
        through `proxy.startup.build_runtime`, which reports that as a config error.

        From a reload (`previous`), a route whose config is unchanged keeps its signer (and so
        its credentials, such as a fetched token) and, while its TLS files are unchanged too,
        its upstream options (and so its pooled connections)."""
        routes: list[Route] = []
        for index, rc in enumerate(config.routes):
            kept = previous.table.by_name.get(rc.name) if previous is not None else None
            with setting_at("routes", index):
                if kept is not None and kept.config == rc and kept.signer.still_current():
                    routes.append(Route.compile(rc, kept.signer, kept.options))
                    continue
                with setting_at("signer"):
                    on_refresh = on_refresh_for(rc.name) if on_refresh_for else None
                    signer = build_signer(rc.signer, route=rc.name, on_refresh=on_refresh)
                routes.append(Route.compile(rc, signer))  # its TLS context: `tls` keys
        with setting_at("access"):
            access = AccessPolicy.from_config(config.access)
        with setting_at("interception"):
            leaves = _leaf_store(config)
        return cls(
            config=config,
            table=RouteTable(routes),
            access=access,
            leaves=leaves,
            intercepts=any(rc.intercept for rc in config.routes),
        )

    def is_ready(self) -> bool:
        return all(route.signer.is_ready() for route in self.table.routes)


def _leaf_store(config: Config) -> LeafStore | None:
    interception = config.interception
    if interception is None:
        return None
    # Here, not at the top: only a config with `interception` needs cryptography (~7 MiB of
    # a sidecar's memory: bench/footprint.py).
    from proxy.interception.ca import CertificateAuthority
    from proxy.interception.leaves import LeafStore, normalize_host

    ca = CertificateAuthority.from_pem(interception.ca_cert.reveal(), interception.ca_key.reveal())
    exact = [
        normalize_host(
            rc.match.host.rpartition(":")[0] if _has_port(rc.match.host) else rc.match.host
        )
        for rc in config.routes
        if rc.intercept and rc.match.host and not rc.match.host.startswith("*.")
    ]
    return LeafStore(
        ca,
        validity_days=interception.leaf_validity_days,
        exact_hosts=exact,
        max_cached=interception.max_cached_leaves,
    )


def _has_port(host: str) -> bool:
    return ":" in host and not host.endswith("]")


class ProxyHandler:
    """The request handler of the proxy port."""

    def __init__(self, runtime: Runtime, forwarder: Forwarder, metrics: Metrics) -> None:
        self.runtime = runtime
        self.forwarder = forwarder
        self.metrics = metrics
        self.clock = ClockSkew(metrics.registry)
        self.tunnels = TunnelManager(TunnelMetrics(metrics.registry))
        # The tasks of the requests in flight, so a shutdown can cut the ones still running at
        # its deadline; and the error code a cancelled request is logged and counted under:
        # the client went away, unless the server is cutting it (`ProxyServer.stop`).
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.cancelled_as = "client_closed"

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self.runtime  # this request keeps this config to its end
        tunnel = self.tunnels.of(request)
        if request.method == "CONNECT" and tunnel is None:
            return await self._connect(request, runtime)
        # The path is logged once the target is admitted: never a refused request's bytes.
        exchange = Exchange(request.method, "", time.perf_counter())
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        self.metrics.in_flight += 1
        if tunnel is not None:
            tunnel.in_flight += 1
        try:
            return await self._handle(request, runtime, exchange, tunnel)
        except ProxyError as err:
            if exchange.response_started:  # cannot happen by design; never send a second head
                return _cut(request, exchange, err.code)
            exchange.status, exchange.error = err.status, err.code
            response = error_response(
                err.status, err.code, err.message, exchange.route, err.headers
            )
            if err.close or body_unread(request):
                response.force_close()  # unread body bytes must never pass as a request
                if request.method == "CONNECT":  # inside a tunnel
                    end_connect_payload(request)
            return response
        except ResponseAborted as err:
            log.warning("response_aborted", route=exchange.route, reason=str(err))
            return _cut(request, exchange, None)
        except asyncio.CancelledError:
            exchange.error = exchange.error or self.cancelled_as
            if exchange.error == "shutdown" and not exchange.status:
                exchange.status = SHUTDOWN_CUT_STATUS  # ours, not the client's (499)
            raise
        except Exception as err:
            return self._last_resort(request, exchange, err)
        finally:
            self.in_flight.discard(task)
            self.metrics.in_flight -= 1
            if tunnel is not None:
                tunnel.in_flight -= 1
                tunnel.requests += 1
                tunnel.bytes_in += exchange.bytes_in
                tunnel.bytes_out += exchange.bytes_out
                if tunnel.connection is not None:
                    tunnel.connection.request_done()
            if not exchange.status:  # the client left before any answer
                exchange.status = CLIENT_CLOSED_STATUS
            if exchange.upstream_date and exchange.route:
                self.clock.observe(exchange.route, exchange.upstream_date)
            duration = time.perf_counter() - exchange.started
            self.metrics.observe(exchange, duration)
            self._access_log(exchange, duration)

    async def _connect(self, request: web.BaseRequest, runtime: Runtime) -> web.StreamResponse:
        """A CONNECT: a tunnel whose requests are signed (`proxy.tunnel`), or a refusal that
        names its target in the access log. An accepted CONNECT is not an access-log request:
        its tunnel logs one line when it closes."""
        try:
            plan = plan_connect(request, runtime, self.tunnels.open_count)
        except ProxyError as err:
            exchange = Exchange("CONNECT", target_for_log(request.raw_path), time.perf_counter())
            exchange.status, exchange.error = err.status, err.code
            self.metrics.observe(exchange, time.perf_counter() - exchange.started)
            self._access_log(exchange, time.perf_counter() - exchange.started)
            response = error_response(err.status, err.code, err.message, None, err.headers)
            response.force_close()
            end_connect_payload(request)
            return response
        return await self.tunnels.open(request, plan, runtime)

    async def _handle(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        exchange: Exchange,
        tunnel: Tunnel | None = None,
    ) -> web.StreamResponse:
        authority = admit(request, runtime, tunneled=tunnel is not None)
        target = request_target(request)
        exchange.path = target.path
        if tunnel is None:
            match = find_route(runtime.table, target, request, authority)
        else:
            match = tunnel.route_request(runtime, target, request.headers.get("Host"), authority)
        route = match.route
        exchange.route = route.name
        take_slot(route)
        try:
            idle = route.config.timeout.client_body
            if idle is None or not request.body_exists or request.content.is_eof():
                return await self._proxy(request, match, target.query, exchange)
            async with client_body_deadline(request, idle, exchange):
                return await self._proxy(request, match, target.query, exchange)
        finally:
            route.limits.leave()

    async def _proxy(
        self, request: web.BaseRequest, match: RouteMatch, query: str, exchange: Exchange
    ) -> web.StreamResponse:
        """Read the body (if the scheme signs it), sign, forward, relay."""
        upstream = await read_request(request, match, query)
        try:
            # One of the route's upstream connections, held to the end of the relayed answer.
            async with match.route.limits.upstream.hold():
                response = await self._sign_and_forward(request, match.route, upstream, exchange)
                return await relay(request, response, exchange)
        finally:
            if upstream.spooled is not None:
                upstream.spooled.close()  # the temporary file goes, whatever happened

    async def _sign_and_forward(
        self,
        request: web.BaseRequest,
        route: Route,
        upstream: UpstreamRequest,
        exchange: Exchange,
    ) -> UpstreamResponse:
        """Sign and send; with `retries`, sign afresh (new time, new nonce) and send again.

        Credentials the upstream refuses (`signer.refused_statuses`, OAuth2's 401) are renewed,
        and a replayable request sent once more with the new ones, apart from `retries`."""
        policy = route.retry
        replayable = (
            upstream.body is not None or upstream.spooled is not None or not request.body_exists
        )
        attempts = policy.attempts_for(request.method, replayable) if policy else 1
        refused = route.signer.refused_statuses
        renewed = False  # once per request: a refused renewal is relayed, not renewed again
        attempt = 1
        while True:
            try:
                await route.signer.before_sign()
                signed = sign(route, upstream)
                response = await self.forwarder.forward(request, signed, route.options, exchange)
            except ProxyError as err:
                if policy is None or attempt == attempts or err.code not in policy.errors:
                    raise
                reason = err.code
            else:
                if refused and response.status in refused and not renewed:
                    route.signer.on_upstream_status(response.status, signed)
                    renewed = True
                    if replayable:
                        await response.close()
                        log.info("credentials_refused", route=route.name, status=response.status)
                        continue
                if policy is None or attempt == attempts or response.status not in policy.statuses:
                    return response
                await response.close()
                reason = f"status {response.status}"
            self.metrics.retries.labels(route.name).inc()
            delay = policy.delay(attempt)
            log.info("retrying", route=route.name, attempt=attempt, reason=reason, delay=delay)
            await asyncio.sleep(delay)
            attempt += 1

    @staticmethod
    def _last_resort(
        request: web.BaseRequest, exchange: Exchange, err: Exception
    ) -> web.StreamResponse:
        """An exception nothing else expected: one error line with the traceback's frames (its
        message is left out: it can quote request or credential data), and a JSON 500."""
        log.error(
            "internal_error",
            route=exchange.route,
            error_type=type(err).__name__,
            traceback="".join(traceback.format_tb(err.__traceback__)),
        )
        if exchange.response_started:
            return _cut(request, exchange, "internal_error")
        exchange.status, exchange.error = 500, "internal_error"
        message = "the proxy failed on this request; the error is in its log"
        return error_response(500, "internal_error", message, exchange.route)

    @staticmethod
    def _access_log(exchange: Exchange, duration: float) -> None:
        access_log.write(
            {
                "route": exchange.route,
                "method": exchange.method,
                "path": exchange.path,
                "status": exchange.status,
                "duration_ms": round(duration * 1000, 3),
                "bytes_in": exchange.bytes_in,
                "bytes_out": exchange.bytes_out,
                "upstream": exchange.upstream_host,
                "error": exchange.error,
                "aborted": exchange.aborted,
            }
        )


def admit(
    request: web.BaseRequest, runtime: Runtime, *, tunneled: bool = False
) -> Authority | None:
    """Refuse, before any route is looked at, what the proxy never forwards, or return the
    request's `Host` authority, parsed once for routing. A request inside a tunnel was
    admitted with its CONNECT (`proxy.tunnel`)."""
    if runtime.access is not None and not tunneled:
        runtime.access.check(request.remote, request.headers.get("Proxy-Authorization"))
    if request.method == "CONNECT":  # only reached inside a tunnel
        # Closed: the bytes after a CONNECT are the tunnel's, never a request to serve.
        raise ProxyError(405, "connect_not_supported", _CONNECT_IN_TUNNEL, close=True)
    if request.version not in _HTTP_1:
        # llhttp also accepts HTTP/0.9-style and "HTTP/2.0" request lines in HTTP/1 framing.
        raise ProxyError(505, "http_version_not_supported", "only HTTP/1.0 and 1.1")
    authority = check_request(request)  # method, target bytes, framing, Host (admission.py)
    if not all(_is_utf8(value) for _, value in request.raw_headers):
        # aiohttp's writer would silently drop the bytes it cannot encode: refuse instead
        # of forwarding (and signing) a header that is not what the app sent.
        raise ProxyError(400, "invalid_header", "header values must be UTF-8 text")
    return authority


def request_target(request: web.BaseRequest) -> RequestTarget:
    try:
        return parse_target(request.raw_path)
    except TargetError as err:
        raise ProxyError(400, "invalid_target", str(err)) from None


def find_route(
    table: RouteTable, target: RequestTarget, request: web.BaseRequest, authority: Authority | None
) -> RouteMatch:
    match = table.match_authority(target, authority)
    if match is None:
        host = target.host or request.headers.get("Host", "")
        raise ProxyError(
            403,
            "no_route",
            f"no route matches host {host!r} and path {target.path!r}; "
            "this proxy only forwards to the routes in its config",
        )
    return match


def take_slot(route: Route) -> None:
    """Count the request against the route's rate (429) and concurrency (503) limits; the
    caller gives the slot back with `route.limits.leave()`."""
    if (wait := route.limits.retry_after()) is not None:
        raise ProxyError(
            429,
            "rate_limited",
            "this route's rate limit is exhausted",
            headers={"Retry-After": str(wait)},
        )
    if not route.limits.try_enter():
        raise ProxyError(503, "concurrency_limited", "this route is at its max_concurrent")


def sign(route: Route, upstream: UpstreamRequest) -> UpstreamRequest:
    """Sign `upstream` now with a fresh nonce; every failure becomes a ProxyError."""
    try:
        result = route.signer.sign(upstream, SigningContext.now())
    except CredentialsUnavailable as err:
        log.error("credentials_unavailable", route=route.name, reason=str(err))
        message = "the route's credentials are not available yet; retry shortly"
        raise ProxyError(503, "credentials_unavailable", message) from None
    except SigningRefused as err:  # the client's request, not our failure: a 4xx
        log.info("signing_refused", route=route.name, code=err.code, reason=str(err))
        raise ProxyError(err.status, err.code, f"the request cannot be signed: {err}") from None
    except ValueError as err:  # signers raise ValueError with client-safe messages
        log.warning("signing_failed", route=route.name, reason=str(err))
        raise ProxyError(500, "signing_failed", f"the request cannot be signed: {err}") from None
    except Exception as err:
        log.error("signing_failed", route=route.name, error_type=type(err).__name__)
        raise ProxyError(500, "signing_failed", "the request cannot be signed") from None
    if "warning" in result.details:
        log.warning("signing_warning", route=route.name, warning=result.details["warning"])
    signed = result.request
    if signed.body is not None or signed.spooled is not None:
        length = str(signed.body_size)
        if signed.headers.get("Content-Length") != length:  # a copy only when it changed
            signed = signed.with_headers({"Content-Length": length})
    return signed


def _cut(request: web.BaseRequest, exchange: Exchange, error: str | None) -> web.Response:
    """End a request whose answer cannot be sent: the response started, or the client left."""
    exchange.aborted = True
    if error is not None:
        exchange.error = error
    if request.transport is not None:
        request.transport.abort()  # never let a cut-off body look complete
    # Never sent (the connection is gone); returning rather than raising keeps aiohttp from
    # logging a traceback for what is an ordinary event for a proxy.
    return web.Response()


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
