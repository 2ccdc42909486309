"""The baseline: the reverse proxy someone writes in an afternoon with aiohttp.

An aiohttp application with one catch-all route and one shared ClientSession: copy the request
headers (minus Host and hop-by-hop), add an `Authorization: Bearer` header, send the body along,
read the whole upstream body and return it. Default settings everywhere (the default asyncio
event loop unless `--uvloop`); no metrics, no logs, no streaming, no limits.

    python bench/naive_proxy.py --port 8082 --upstream http://127.0.0.1:8081 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

from aiohttp import ClientSession, web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)
TOKEN = "bench-token"


async def proxy(request: web.Request) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["Authorization"] = f"Bearer {TOKEN}"
    body = await request.read() if request.body_exists else None
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(
        request.method, url, headers=headers, data=body, allow_redirects=False
    ) as upstream:
        payload = await upstream.read()
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return web.Response(status=upstream.status, body=payload, headers=out)


async def client_session(app: web.Application) -> AsyncIterator[None]:
    async with ClientSession() as session:
        app[SESSION] = session
        yield


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    loop = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    web.run_app(
        make_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
