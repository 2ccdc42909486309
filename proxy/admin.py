"""The admin port: probes and metrics, apart from the proxied paths so they never collide.

It serves no config and no secret.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def make_admin_app(
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    before_scrape: Callable[[], None] | None = None,
    problems: Callable[[], dict[str, str]] | None = None,
) -> web.Application:
    """`problems`: route name -> why its credentials are not usable yet (never a secret)."""

    async def metrics(_: web.Request) -> web.Response:
        if before_scrape is not None:
            before_scrape()
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if is_ready():
            return web.json_response({"status": "ready"})
        answer: dict[str, object] = {"status": "not ready"}
        if problems is not None and (found := problems()):
            answer["routes"] = found
        return web.json_response(answer, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
