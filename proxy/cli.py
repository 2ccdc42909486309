"""The `signing-proxy` command: run, check, sign, demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Final

from proxy import __version__
from proxy.command import (
    EXIT_CONFIG,
    build_or_report,
    load_or_report,
    report_config_error,
    run_event_loop,
)
from proxy.config import Config, ConfigError, describe_signer

SETTLE_AFTER_SECONDS: Final = 1.0  # from ready to the garbage collector's settling

_EPILOG: Final = """\
examples:
  # from the repository's root; the credentials of config/example.yaml are dummies
  signing-proxy demo                          # try it: a demo config and a local echo server
  set -a; . config/example.env; set +a        # the example's dummy credentials, as env vars
  signing-proxy check --config config/example.yaml    # validate a config, list its routes
  signing-proxy run --config config/example.yaml      # serve on the config's listen address
  signing-proxy run --config config/example.yaml --listen 127.0.0.1:18080 --log-format console
  signing-proxy sign --config config/example.yaml -X POST -H 'Content-Type: application/json' \\
      --data '{"a":1}' --at 2023-11-14T22:13:20.123Z https://api-us.devo.com/probio/operation

Apps use it as a reverse proxy (point their base URL at it) or a forward proxy
(http_proxy and HTTP_PROXY=http://127.0.0.1:8080 with plain http:// URLs; a CONNECT to port 80
of a routed host is signed too). For https:// URLs a route can opt into HTTPS interception
(intercept: true, with a CA from `signing-proxy ca create`). Requests that match no route are
refused with 403; the proxy never opens a blind tunnel.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signing-proxy",
        description="A reverse/forward proxy that signs requests to HMAC-authenticated APIs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"signing-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", required=True, help="the YAML config file")
    run.add_argument("--listen", help="proxy address HOST:PORT (overrides the config)")
    run.add_argument("--admin", help="admin address HOST:PORT (overrides the config)")
    run.add_argument("--log-format", choices=["json", "console"], default="json")
    run.add_argument(
        "--shutdown-timeout",
        type=float,
        default=20.0,
        help="seconds in-flight requests get to finish on SIGTERM/SIGINT, after which they are "
        "cut; the process exits within drain delay + this + 1 s (default 20)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the listening socket (SO_REUSEPORT); one admin port "
        "serves all their metrics (default 1)",
    )
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    run.add_argument(
        "--drain-delay",
        type=float,
        default=3.0,
        help="seconds to keep accepting after SIGTERM while /readyz fails, so the endpoint "
        "leaves the load balancer first (default 3; SIGINT skips it)",
    )

    check = commands.add_parser("check", help="validate a config and list its routes")
    check.add_argument("--config", required=True)

    commands.add_parser("schema", help="print the config's JSON Schema (config/schema.json)")

    sign = commands.add_parser(
        "sign", help="show the signed request the proxy would send (sends nothing)"
    )
    sign.add_argument("--config", required=True)
    sign.add_argument("--route", help="route name (default: match URL as the proxy would)")
    sign.add_argument("-X", "--request", dest="method", default=None, help="method (default GET)")
    sign.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    data = sign.add_mutually_exclusive_group()
    data.add_argument("--data", help="request body as a string")
    data.add_argument("--data-binary", help="request body from @FILE (or a literal string)")
    sign.add_argument("--at", help="signing time: epoch milliseconds or ISO 8601 UTC")
    sign.add_argument("--nonce", help="nonce (default: a random UUID4)")
    sign.add_argument("--json", action="store_true", help="print one JSON object")
    sign.add_argument(
        "--explain",
        action="store_true",
        help="also show each step (hmac: every var, the message with non-printable bytes "
        "escaped, the key's shape, every placement); never a secret",
    )
    sign.add_argument(
        "--fetch-token",
        action="store_true",
        help="oauth2-client-credentials: really fetch a token from the token endpoint (to test "
        "the client credentials); it is never printed",
    )
    sign.add_argument("url", help="the URL the app would request")

    from proxy.interception.cacmd import add_ca_parser

    add_ca_parser(commands)

    demo = commands.add_parser(
        "demo", help="run the proxy on a demo config in front of a local echo server"
    )
    demo.add_argument("--config", help="demo config (default: the bundled config/demo.yaml)")
    demo.add_argument(
        "--listen",
        help="proxy address HOST:PORT (default: the config's, or a free port if it is taken; "
        "port 0: a free port)",
    )
    demo.add_argument(
        "--admin",
        help="admin address HOST:PORT (default: the config's, or a free port if it is taken)",
    )
    demo.add_argument(
        "--self-test",
        action="store_true",
        help="send the demo requests, print what came back, and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in {"check", "run", "demo"}:
        from proxy.aiohttp_internals import UnsupportedAiohttp, require_hooks

        try:
            require_hooks()
        except UnsupportedAiohttp as err:
            print(f"signing-proxy: cannot start: {err}", file=sys.stderr)
            return 1
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args)
    if args.command == "schema":
        print(config_schema_json())
        return 0
    if args.command == "sign":
        from proxy.signcmd import sign_command

        return sign_command(args)
    if args.command == "ca":
        from proxy.interception.cacmd import ca_command

        return ca_command(args)
    if args.command == "demo":
        from proxy.demo import run_demo

        return run_demo(args.config, self_test=args.self_test, listen=args.listen, admin=args.admin)
    raise AssertionError(args.command)


def config_schema_json() -> str:
    import json

    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "signing-proxy config"
    return json.dumps(schema, indent=2, sort_keys=True)


def _check(path: str) -> int:
    from proxy.signers import plugin_classes, plugin_errors

    plugins = plugin_classes()  # every installed plugin tried, so a broken one is reported
    for name, reason in plugin_errors().items():
        print(f"warning: plugin scheme {name} not loaded: {reason}", file=sys.stderr)
    runtime = build_or_report(path)  # what `run` builds, short of the network
    if runtime is None:
        return EXIT_CONFIG
    config = runtime.config
    if plugins:
        print("plugin schemes: " + ", ".join(_plugin_source(cls) for cls in plugins))
    print(
        f"{path}: OK, {len(config.routes)} route(s); listen {config.listen}, admin {config.admin}"
    )
    for route in config.routes:
        match = " ".join(
            f"{key}={value}" for key, value in route.match.model_dump().items() if value is not None
        )
        intercept = "  intercept" if route.intercept else ""
        print(
            f"  {route.name}: {match} -> {route.upstream}  signer {describe_signer(route.signer)}"
            f"{intercept}"
        )
    if config.interception is not None:
        from proxy.interception.ca import CertificateAuthority

        interception = config.interception
        ca = CertificateAuthority.from_pem(
            interception.ca_cert.reveal(), interception.ca_key.reveal()
        )
        print(
            f"  interception: CA {ca.subject} (ca_cert={interception.ca_cert.source}, "
            f"ca_key={interception.ca_key.source}) valid until {ca.not_after:%Y-%m-%d}; "
            f"host certificates for {interception.leaf_validity_days} day(s)"
        )
    return 0


def _plugin_source(cls: type) -> str:
    return f"{getattr(cls, 'scheme', '?')} ({cls.__module__}.{cls.__qualname__})"


def _run(args: argparse.Namespace) -> int:
    from proxy.logs import configure_logging
    from proxy.server import ProxyServer, settle_garbage_collector

    configure_logging(args.log_format)
    if args.workers < 1:
        print("signing-proxy: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if args.workers > 1:
        runtime = build_or_report(args.config)  # refused here, not by N workers
        if runtime is None:
            return EXIT_CONFIG
        return _run_workers(args, runtime.config)
    config = load_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        server = ProxyServer(
            config,
            config_path=args.config,
            listen=args.listen,
            admin=args.admin,
            shutdown_timeout=args.shutdown_timeout,
            drain_delay=args.drain_delay,
            worker=args.worker,
        )
    except ConfigError as err:  # a setting that validated but cannot be used
        report_config_error(err)
        return EXIT_CONFIG

    def settle_soon() -> None:
        # The settling's full collection (10-40 ms) would hold the first /readyz answer, and
        # start-up time is the pod's: it runs once the proxy has served for a moment.
        asyncio.get_running_loop().call_later(SETTLE_AFTER_SECONDS, settle_garbage_collector)

    try:
        run_event_loop(server.run_until_signalled(on_ready=settle_soon))
    except OSError as err:  # typically: the address is in use
        print(f"signing-proxy: cannot start: {err}", file=sys.stderr)
        return 1
    return 0


def _run_workers(args: argparse.Namespace, config: Config) -> int:
    from proxy.workers import Supervisor

    supervisor = Supervisor(
        config_path=args.config,
        listen=args.listen or config.listen,
        admin=args.admin or config.admin,
        workers=args.workers,
        log_format=args.log_format,
        shutdown_timeout=args.shutdown_timeout,
        drain_delay=args.drain_delay,
    )
    codes: list[int] = []

    async def main() -> None:
        codes.append(await supervisor.run())

    try:
        run_event_loop(main())
    except OSError as err:
        print(f"signing-proxy: cannot start: {err}", file=sys.stderr)
        return 1
    return codes[0] if codes else 1
