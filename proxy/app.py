"""One request's way through routing -> signer -> forward.

Everything built from a config load lives in one immutable `Runtime`; a request takes the
runtime once when it arrives and keeps it to the end, so a reload (swap of the runtime) never
changes a request half-way.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.access import AccessPolicy
from proxy.body import SpooledBody, client_body_deadline
from proxy.clock import ClockSkew
from proxy.config import Config, RetryConfig, RouteConfig
from proxy.errors import ProxyError, error_response
from proxy.exchange import Exchange
from proxy.forward import (
    CHUNK_SIZE,
    HOP_BY_HOP,
    Forwarder,
    RetryableStatus,
    UpstreamAborted,
    UpstreamOptions,
    connection_tokens,
)
from proxy.limits import RouteLimits
from proxy.logs import access_log, get_logger
from proxy.metrics import Metrics
from proxy.routing import Route, RouteMatch, RouteTable, TargetError, parse_target
from proxy.signers import (
    BodyDigest,
    CredentialsUnavailable,
    OnCredentialRefresh,
    SigningContext,
    SigningRefused,
    UpstreamRequest,
    build_signer,
)

log = get_logger("signing_proxy")

_HTTP_1: Final = frozenset({HttpVersion10, HttpVersion11})
_CONNECT_MESSAGE: Final = (
    "CONNECT tunnels are not supported: the proxy must see requests to sign them. "
    "Send plain http:// URLs through it (HTTP_PROXY); it speaks TLS to the upstream."
)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything built from one config load."""

    config: Config
    table: RouteTable
    options: dict[str, UpstreamOptions]
    limits: dict[str, RouteLimits]
    access: AccessPolicy | None

    @classmethod
    def build(
        cls,
        config: Config,
        on_refresh_for: Callable[[str], OnCredentialRefresh] | None = None,
        previous: Runtime | None = None,
    ) -> Runtime:
        """Build every route; from a reload (`previous`), a route whose config is unchanged
        keeps its signer (and so its credentials, such as a fetched token) and, while its TLS
        files are unchanged too, its upstream options (and so its pooled connections)."""
        routes, options = [], {}
        for rc in config.routes:
            kept = previous.table.by_name.get(rc.name) if previous is not None else None
            if kept is not None and kept.config == rc and kept.signer.still_current():
                signer = kept.signer
            else:
                kept = None
                signer = build_signer(
                    rc.signer,
                    route=rc.name,
                    on_refresh=on_refresh_for(rc.name) if on_refresh_for else None,
                )
            routes.append(Route.compile(rc, signer))
            reuse = previous.options[rc.name] if kept is not None and previous else None
            options[rc.name] = UpstreamOptions.for_route(rc, reuse)
        return cls(
            config=config,
            table=RouteTable(routes),
            options=options,
            limits={rc.name: RouteLimits.for_route(rc) for rc in config.routes},
            access=AccessPolicy.from_config(config.access),
        )

    def is_ready(self) -> bool:
        return all(route.signer.is_ready() for route in self.table.routes)


class ProxyHandler:
    """The request handler of the proxy port."""

    def __init__(self, runtime: Runtime, forwarder: Forwarder, metrics: Metrics) -> None:
        self.runtime = runtime
        self.forwarder = forwarder
        self.metrics = metrics
        self.clock = ClockSkew(metrics.registry)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self.runtime  # this request keeps this config to its end
        exchange = Exchange(request.method, request.path, time.perf_counter())
        self.metrics.in_flight += 1
        try:
            return await self._handle(request, runtime, exchange)
        except ProxyError as err:
            exchange.status, exchange.error = err.status, err.code
            response = error_response(
                err.status, err.code, err.message, exchange.route, err.headers
            )
            if err.close:
                response.force_close()
            return response
        except UpstreamAborted as err:
            exchange.aborted = True
            log.warning("response_aborted", route=exchange.route, reason=str(err))
            if request.transport is not None:
                request.transport.abort()  # never let a cut-off body look complete
            # Never sent (the connection is gone); returning rather than raising keeps aiohttp
            # from logging a traceback for what is an ordinary event for a proxy.
            return web.Response()
        except asyncio.CancelledError:
            exchange.error = exchange.error or "client_closed"
            raise
        finally:
            self.metrics.in_flight -= 1
            if exchange.upstream_date and exchange.route:
                self.clock.observe(exchange.route, exchange.upstream_date)
            duration = time.perf_counter() - exchange.started
            self.metrics.observe(exchange, duration)
            self._access_log(exchange, duration)

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

    async def _handle(
        self, request: web.BaseRequest, runtime: Runtime, exchange: Exchange
    ) -> web.StreamResponse:
        if runtime.access is not None:
            runtime.access.check(request.remote, request.headers.get("Proxy-Authorization"))
        if request.method == "CONNECT":
            raise ProxyError(405, "connect_not_supported", _CONNECT_MESSAGE)
        if request.version not in _HTTP_1:
            # llhttp also accepts HTTP/0.9-style and "HTTP/2.0" request lines in HTTP/1 framing.
            raise ProxyError(505, "http_version_not_supported", "only HTTP/1.0 and 1.1")
        if not all(_is_utf8(value) for _, value in request.raw_headers):
            # aiohttp's writer would silently drop the bytes it cannot encode: refuse instead
            # of forwarding (and signing) a header that is not what the app sent.
            raise ProxyError(400, "invalid_header", "header values must be UTF-8 text")
        try:
            target = parse_target(request.raw_path)
        except TargetError as err:
            raise ProxyError(400, "invalid_target", str(err)) from None
        exchange.path = target.path
        match = runtime.table.match(target, request.headers.get("Host"))
        if match is None:
            host = target.host or request.headers.get("Host", "")
            raise ProxyError(
                403,
                "no_route",
                f"no route matches host {host!r} and path {target.path!r}; "
                "this proxy only forwards to the routes in its config",
            )
        exchange.route = match.route.name
        limits = runtime.limits[match.route.name]
        if (wait := limits.retry_after()) is not None:
            raise ProxyError(
                429,
                "rate_limited",
                "this route's rate limit is exhausted",
                headers={"Retry-After": str(wait)},
            )
        if not limits.try_enter():
            raise ProxyError(503, "concurrency_limited", "this route is at its max_concurrent")
        idle = match.route.config.timeout.client_body
        try:
            if idle is None or not request.body_exists or request.content.is_eof():
                return await self._sign_and_forward(request, runtime, match, target.query, exchange)
            async with client_body_deadline(request, idle, exchange):
                return await self._sign_and_forward(request, runtime, match, target.query, exchange)
        finally:
            limits.leave()

    async def _sign_and_forward(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        match: RouteMatch,
        query: str,
        exchange: Exchange,
    ) -> web.StreamResponse:
        route = match.route
        if not route.signer.needs_body(request.method):
            await _send_continue(request)
            upstream = prepare_upstream(match, request.method, query, request.headers, None)
            return await self._forward(request, runtime, route, upstream, exchange)
        body = await read_body(request, route.config, route.signer.new_body_digest())
        try:
            size = body.spooled.size if body.spooled is not None else None
            upstream = prepare_upstream(
                match, request.method, query, request.headers, body.data, body_size=size
            )
            if body.spooled is not None:
                upstream = upstream.replace(body_digest=body.digest, spooled=body.spooled)
            return await self._forward(request, runtime, route, upstream, exchange)
        finally:
            if body.spooled is not None:
                body.spooled.close()  # the temporary file goes, whatever happened

    async def _forward(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        upstream: UpstreamRequest,
        exchange: Exchange,
    ) -> web.StreamResponse:
        """Sign and send; with `retries`, sign afresh (new time, new nonce) and send again."""
        options = runtime.options[route.name]
        policy = route.config.retries
        replayable = upstream.body is not None or upstream.spooled is not None
        replayable = replayable or not request.body_exists
        attempts = 1
        if policy and request.method in policy.methods and replayable:
            attempts = policy.attempts
        # Credentials the upstream refuses (OAuth2: 401) are renewed, and a replayable request
        # sent once more with the new ones, using none of the `retries` attempts.
        refused = route.signer.refused_statuses
        renew = refused if replayable else frozenset()
        attempt = 0
        while attempt < attempts:
            attempt += 1
            last = attempt == attempts
            statuses = (frozenset() if last else _retry_statuses(policy)) | renew
            try:
                await route.signer.before_sign()
                signed = sign(route, upstream)
                response = await self.forwarder.forward(
                    request, signed, options, exchange, statuses
                )
                if exchange.status in refused and not replayable:  # relayed; renewed for later
                    route.signer.on_upstream_status(exchange.status, signed)
                return response
            except RetryableStatus as retry:
                if retry.status in renew:
                    route.signer.on_upstream_status(retry.status, signed)
                    log.info("credentials_refused", route=route.name, status=retry.status)
                    renew, attempt = frozenset(), attempt - 1
                    continue
                reason = f"status {retry.status}"
            except ProxyError as err:
                if last or not _retries_error(policy, err):
                    raise
                reason = err.code
            assert policy is not None
            self.metrics.retries.labels(route.name).inc()
            # Exponential backoff with full jitter (not a secret: `random` is right here).
            ceiling = min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1))
            delay = random.uniform(0, ceiling)  # noqa: S311
            log.info("retrying", route=route.name, attempt=attempt, reason=reason, delay=delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _retry_statuses(policy: RetryConfig | None) -> frozenset[int]:
    return frozenset(on for on in policy.on if isinstance(on, int)) if policy else frozenset()


def _retries_error(policy: RetryConfig | None, err: ProxyError) -> bool:
    """Whether the proxy's own failure is one the route retries."""
    if policy is None:
        return False
    wanted = {
        "upstream_unreachable": "connect_error",  # nothing reached the upstream
        "upstream_bad_response": 502,
        "upstream_timeout": 504,
    }.get(err.code)
    return wanted is not None and wanted in policy.on


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


def prepare_upstream(
    match: RouteMatch,
    method: str,
    query: str,
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    body: bytes | None,
    *,
    body_size: int | None = None,
) -> UpstreamRequest:
    """The request to sign: the app's request minus hop-by-hop headers, with the route's static
    header edits, `Host` set to the upstream's, `Content-Length` set to the size of a body read
    for signing (`body`, or `body_size` when it was spooled), and the path mapped onto the
    upstream's. One pass over the app's headers, which keep their order."""
    route = match.route
    edited = route.edited_headers
    named = connection_tokens(headers)
    if body is not None:
        body_size = len(body)
    length = None if body_size is None else str(body_size)
    out: CIMultiDict[str] = CIMultiDict()
    host_done = length_done = False
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "host":
            if not host_done:
                out.add(name, route.upstream_host)
                host_done = True
            continue
        if (
            lowered in HOP_BY_HOP
            or lowered in edited
            or lowered.startswith("proxy-")
            or (named and lowered in named)
        ):
            continue
        if length is not None and lowered == "content-length":
            if value != length or length_done:  # the body we send decides its length
                continue
            length_done = True
        out.add(name, value)
    out.extend(route.config.headers.set)
    if not host_done:
        out.add("Host", route.upstream_host)
    if length is not None and not length_done:
        out.add("Content-Length", length)
    return UpstreamRequest(
        method=method,
        scheme=route.upstream_scheme,
        host=route.upstream_host,
        path=match.path,
        query=query,
        headers=CIMultiDictProxy(out),
        body=body,
    )


@dataclass(slots=True)
class ReadBody:
    """A body read for signing: `data` in memory, or `spooled` to disk with its `digest`."""

    data: bytes | None
    spooled: SpooledBody | None = None
    digest: BodyDigest | None = None


async def read_body(
    request: web.BaseRequest, route: RouteConfig, digest: BodyDigest | None
) -> ReadBody:
    """The whole request body, refusing (413) anything over `max_body_bytes`.

    Past `spool_threshold_bytes`, when the scheme can hash incrementally (`digest`), the body
    goes to a temporary file while `digest` is fed, so memory stays flat whatever the size.
    """
    limit = route.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    await _send_continue(request)
    if declared is not None and (digest is None or declared <= route.spool_threshold_bytes):
        return ReadBody(await _read_declared(request, declared))
    memory = bytearray()
    spooled: SpooledBody | None = None
    size = 0
    try:
        async for chunk in request.content.iter_chunked(CHUNK_SIZE):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if spooled is not None:
                digest.update(chunk)  # type: ignore[union-attr]
                await spooled.write(chunk)
                continue
            memory += chunk
            if digest is not None and size > route.spool_threshold_bytes:
                spooled = SpooledBody()
                digest.update(bytes(memory))
                await spooled.write(memory)
                memory = bytearray()
        if spooled is not None:
            await spooled.finish()
    except (HttpProcessingError, web.RequestPayloadError) as err:
        if spooled is not None:
            spooled.close()
        raise ProxyError(400, "invalid_body", f"the request body is malformed: {err}") from None
    except BaseException:
        if spooled is not None:
            spooled.close()
        raise
    if spooled is not None:
        return ReadBody(None, spooled, digest)
    return ReadBody(bytes(memory))


async def _read_declared(request: web.BaseRequest, length: int) -> bytes:
    """A body of known length, under the spool threshold: one read, no per-chunk loop."""
    if length == 0:
        return b""  # aiohttp's reader for "no body" refuses even a read of 0 bytes
    try:
        return await request.content.readexactly(length)
    except asyncio.IncompleteReadError as err:
        message = f"the request body ended after {len(err.partial)} of its {length} bytes"
        raise ProxyError(400, "invalid_body", message) from None
    except (HttpProcessingError, web.RequestPayloadError) as err:
        raise ProxyError(400, "invalid_body", f"the request body is malformed: {err}") from None


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        413, "body_too_large", f"the request body is over this route's max_body_bytes ({limit})"
    )


async def _send_continue(request: web.BaseRequest) -> None:
    # The low-level server does not answer `Expect: 100-continue`; clients such as curl then
    # stall a second before each large upload. We take the body, so say so.
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
