"""The admin port: probes and metrics, apart from the proxied paths so they never collide.

It serves no config and no secret. Served by the same hardened low-level server as the proxy
port (proxy/aiohttp_internals.py): no `Server` banner on any answer, parser errors included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy.aiohttp_internals import HardenedServer
from proxy.errors import error_response
from proxy.responses import AsGivenResponse

AdminHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def make_admin_handler(
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    before_scrape: Callable[[], None] | None = None,
    problems: Callable[[], dict[str, str]] | None = None,
) -> AdminHandler:
    """`problems`: route name -> why its credentials are not usable yet (never a secret), shown
    by a failing /readyz."""

    def status(text: str, code: int = 200, routes: dict[str, str] | None = None) -> web.Response:
        answer: dict[str, object] = {"status": text}
        if routes:
            answer["routes"] = routes
        return AsGivenResponse(
            status=code,
            body=orjson.dumps(answer),
            headers={"Content-Type": "application/json"},
        )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path not in {"/metrics", "/healthz", "/readyz"}:
            return error_response(404, "not_found", "the admin port serves /metrics, /healthz "
                                  "and /readyz")  # fmt: skip
        if request.method not in {"GET", "HEAD"}:
            return error_response(
                405, "method_not_allowed", "use GET", headers={"Allow": "GET, HEAD"}
            )
        if path == "/metrics":
            if before_scrape is not None:
                before_scrape()
            return AsGivenResponse(
                body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )
        if path == "/healthz":
            return status("ok")
        if is_ready():
            return status("ready")
        return status("not ready", 503, problems() if problems is not None else None)

    return handle


def admin_runner(
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    before_scrape: Callable[[], None] | None = None,
    problems: Callable[[], dict[str, str]] | None = None,
    *,
    shutdown_timeout: float = 1.0,
) -> web.ServerRunner:
    server = HardenedServer(
        make_admin_handler(registry, is_ready, before_scrape, problems),
        access_log=None,
        header_timeout=10.0,
    )
    return web.ServerRunner(server, shutdown_timeout=shutdown_timeout)
