"""Test upstream for the client-library checks: aiohttp, loopback only, plain + TLS ports.

Endpoints: /echo (what arrived: raw path, raw header list, body size, first-byte time),
/big?mib=N (streams N MiB, counts bytes written), /gzip, /slow?s=S (late headers),
/stall (headers then silence), /redirect, /stats (distinct connections, bytes sent).
Run: .venv/bin/python bench/clients/upstream.py --port 18080 --tls-port 18443 --dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import ssl
import time
from pathlib import Path

import trustme
from aiohttp import web

GZIP_BODY = gzip.compress(b"hello gzip " * 100)
CHUNK = b"x" * (64 * 1024)


class Stats:
    def __init__(self) -> None:
        self.peers: set[object] = set()
        self.big_sent = 0


async def record_peer(request: web.Request, stats: Stats) -> None:
    if request.transport is not None:
        stats.peers.add(request.transport.get_extra_info("peername"))


def make_app(stats: Stats) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        await record_peer(request, stats)
        size = 0
        first: float | None = None
        async for chunk in request.content.iter_any():
            if first is None:
                first = time.time()
            size += len(chunk)
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
                ],
                "size": size,
                "first_byte": first,
                "done": time.time(),
            }
        )

    async def small(request: web.Request) -> web.Response:
        await record_peer(request, stats)
        return web.Response(body=b"ok")

    async def big(request: web.Request) -> web.StreamResponse:
        await record_peer(request, stats)
        mib = int(request.query.get("mib", "200"))
        stats.big_sent = 0
        response = web.StreamResponse(headers={"Content-Length": str(mib * 1024 * 1024)})
        await response.prepare(request)
        for _ in range(mib * 16):  # 16 x 64 KiB per MiB; write() drains: backpressure
            await response.write(CHUNK)
            stats.big_sent += len(CHUNK)
        return response

    async def gz(request: web.Request) -> web.Response:
        await record_peer(request, stats)
        return web.Response(body=GZIP_BODY, headers={"Content-Encoding": "gzip"})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(body=b"late")

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"x")
        await asyncio.sleep(10)
        return response

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/echo"})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response({"connections": len(stats.peers), "big_sent": stats.big_sent})

    async def reset(request: web.Request) -> web.Response:
        stats.peers.clear()
        return web.Response(body=b"ok")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/small", small)
    app.router.add_get("/big", big)
    app.router.add_get("/gzip", gz)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stall", stall)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/reset", reset)
    app.router.add_route("*", "/{tail:.*}", echo)  # e.g. /a%2Fb
    return app


def tls_context(directory: Path) -> ssl.SSLContext:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--tls-port", type=int, default=18443)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/clients-bench"))
    parser.add_argument("--seconds", type=float, default=1800.0, help="stop after this long")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    runner = web.AppRunner(make_app(Stats()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
    ssl_ctx = tls_context(args.dir)
    await web.TCPSite(runner, "127.0.0.1", args.tls_port, ssl_context=ssl_ctx).start()
    (args.dir / "ready").write_text("ok")
    try:
        await asyncio.sleep(args.seconds)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
