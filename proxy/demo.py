"""`signing-proxy demo`: the proxy on the demo config, in front of a local echo server."""

from __future__ import annotations

import errno
import shlex
import socket
import sys
from importlib import resources

import aiohttp
from aiohttp import web

from proxy.command import EXIT_CONFIG, build_or_report, run_event_loop
from proxy.config import Config, parse_host_port
from proxy.logs import configure_logging
from proxy.server import ProxyServer

ECHO_ADDRESS = ("127.0.0.1", 8081)  # the upstream of the demo config's routes


def _bindable(address: str) -> str:
    """`address` if it can be bound now, else the same host with a port the OS picks (port 0
    also asks for one). The demo must start even where 8080 is taken: the addresses it prints
    are the ones it took."""
    host, port = parse_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            probe.bind((host, 0))
        chosen = probe.getsockname()[1]
    return f"[{host}]:{chosen}" if family == socket.AF_INET6 else f"{host}:{chosen}"


def _to_echo(config: Config, echo_port: int) -> Config:
    """Routes whose upstream is the echo server's usual address follow it to `echo_port`."""
    usual = f"http://{ECHO_ADDRESS[0]}:{ECHO_ADDRESS[1]}"
    routes = []
    for route in config.routes:
        upstream = route.upstream or ""
        if upstream == usual or upstream.startswith(f"{usual}/"):
            moved = f"http://{ECHO_ADDRESS[0]}:{echo_port}{upstream[len(usual) :]}"
            routes.append(route.model_copy(update={"upstream": moved}))
        else:
            routes.append(route)
    return config.model_copy(update={"routes": routes})


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


async def _demo(config_path: str, self_test: bool, listen: str | None, admin: str | None) -> int:
    runtime = build_or_report(config_path)
    if runtime is None:
        return EXIT_CONFIG
    config = runtime.config
    wanted = (listen or config.listen, admin or config.admin)
    listen, admin = _bindable(wanted[0]), _bindable(wanted[1])
    for asked, taken in zip(wanted, (listen, admin), strict=True):
        if asked != taken and not asked.endswith(":0"):
            print(f"signing-proxy demo: {asked} is in use; using {taken} instead", flush=True)
    echo_host, echo_port = parse_host_port(_bindable("{}:{}".format(*ECHO_ADDRESS)))
    echo_runner = web.ServerRunner(web.Server(echo), access_log=None)
    await echo_runner.setup()
    await web.TCPSite(echo_runner, echo_host, echo_port).start()
    config = _to_echo(config, echo_port)
    server = ProxyServer(config, listen=listen, admin=admin, shutdown_timeout=2.0)
    try:
        if self_test:
            await server.start()
            try:
                return await _self_test(listen)
            finally:
                await server.stop()
        ready = lambda: _print_instructions(listen, admin, echo_port)  # noqa: E731
        await server.run_until_signalled(on_ready=ready)
        return 0
    finally:
        await echo_runner.cleanup()


def _print_instructions(listen: str, admin: str, echo_port: int) -> None:
    print(f"\nsigning-proxy demo: proxy on http://{listen}, echo upstream on port {echo_port}.")
    print("Try these in another terminal (the echo server shows what the proxy sent):\n")
    for title, argv in _curl_lines(listen):
        print(f"  # {title}\n  {shlex.join(argv)}\n")  # quoted: safe to paste in any shell
    metrics = shlex.join(["curl", "-s", f"http://{admin}/metrics"])
    print(f"Metrics: {metrics}    Stop: Ctrl-C\n", flush=True)


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


def run_demo(
    config_path: str | None,
    *,
    self_test: bool = False,
    listen: str | None = None,
    admin: str | None = None,
) -> int:
    configure_logging("console")
    if config_path is None:
        config_path = str(resources.files("proxy") / "demo.yaml")
    try:
        result: list[int] = []

        async def main() -> None:
            result.append(await _demo(config_path, self_test, listen, admin))

        run_event_loop(main())
        return result[0] if result else 0
    except OSError as err:
        print(f"signing-proxy demo: {err}", file=sys.stderr)
        return 1
