"""`signing-proxy demo`: the proxy on the demo config, in front of a local echo server."""

from __future__ import annotations

import sys
from importlib import resources

import aiohttp
from aiohttp import web

from proxy.command import EXIT_CONFIG, load_or_report, run_event_loop
from proxy.config import parse_host_port
from proxy.logs import configure_logging
from proxy.server import ProxyServer

ECHO_ADDRESS = ("127.0.0.1", 8081)


async def echo(request: web.BaseRequest) -> web.Response:
    """Answer with what arrived: method, path, query and headers (the signed request)."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": dict(request.headers),
            "body_bytes": len(body),
        },
        dumps=lambda data: __import__("json").dumps(data, indent=2),
    )


def _curl_lines(listen: str) -> list[tuple[str, list[str]]]:
    base = f"http://{listen}"
    return [
        ("reverse proxy, bearer token added", ["curl", "-s", f"{base}/bearer/hello?x=1"]),
        (
            "forward proxy (HTTP_PROXY), API key header added",
            ["curl", "-s", "-x", base, "http://api.demo.test/v1/items"],
        ),
        ("no route: refused with 403", ["curl", "-s", f"{base}/elsewhere"]),
    ]


async def _demo(config_path: str, self_test: bool) -> int:
    config = load_or_report(config_path)
    if config is None:
        return EXIT_CONFIG
    echo_runner = web.ServerRunner(web.Server(echo), access_log=None)
    await echo_runner.setup()
    await web.TCPSite(echo_runner, *ECHO_ADDRESS).start()
    server = ProxyServer(config, shutdown_timeout=2.0)
    try:
        if self_test:
            await server.start()
            try:
                return await _self_test(config.listen)
            finally:
                await server.stop()
        await server.run_until_signalled(on_ready=lambda: _print_instructions(config.listen))
        return 0
    finally:
        await echo_runner.cleanup()


def _print_instructions(listen: str) -> None:
    print(f"\nsigning-proxy demo: proxy on http://{listen}, echo upstream on port 8081.")
    print("Try these in another terminal (the echo server shows what the proxy sent):\n")
    for title, argv in _curl_lines(listen):
        print(f"  # {title}\n  {' '.join(argv)}\n")
    print("Metrics: curl -s http://127.0.0.1:9090/metrics    Stop: Ctrl-C\n", flush=True)


async def _self_test(listen: str) -> int:
    host, port = parse_host_port(listen)
    base = f"http://{host}:{port}"
    checks = [
        ("reverse", f"{base}/bearer/hello?x=1", None, 200, ("Authorization", "Bearer demo-token")),
        ("forward", "http://api.demo.test/v1/items", base, 200, ("X-Api-Key", "demo-api-key")),
        ("refused", f"{base}/elsewhere", None, 403, None),
    ]
    failures = 0
    async with aiohttp.ClientSession() as session:
        for name, url, proxy, status, header in checks:
            async with session.get(url, proxy=proxy) as response:
                data = await response.json(content_type=None)
            ok = response.status == status and (
                header is None or data["headers"].get(header[0]) == header[1]
            )
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {response.status} {url}")
    return 1 if failures else 0


def run_demo(config_path: str | None, *, self_test: bool = False) -> int:
    configure_logging("console")
    if config_path is None:
        config_path = str(resources.files("proxy") / "demo.yaml")
    try:
        result: list[int] = []

        async def main() -> None:
            result.append(await _demo(config_path, self_test))

        run_event_loop(main())
        return result[0] if result else 0
    except OSError as err:
        print(f"signing-proxy demo: {err}", file=sys.stderr)
        return 1
