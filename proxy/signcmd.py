"""`signing-proxy sign`: the request the proxy would send for a URL, and why. Sends nothing.

It takes the same steps as the proxy (route match, header preparation, signer) with the time
and nonce given on the command line, so a vendor's example can be reproduced exactly. Secret
credentials are redacted from everything printed; identifiers sent in clear (a signer's
`public_fields`) are shown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import orjson
from multidict import CIMultiDict

from proxy.app import Runtime
from proxy.command import EXIT_CONFIG, build_or_report
from proxy.request import prepare_upstream
from proxy.routing import RouteMatch, TargetError, parse_target
from proxy.secrets import Secret
from proxy.signers import (
    CredentialsUnavailable,
    Signer,
    SignerConfig,
    SigningContext,
    SigningRefused,
    SignResult,
    UpstreamRequest,
)
from proxy.signers.hmac.explain import escape_bytes

EXIT_USAGE = 1


def sign_command(args: argparse.Namespace) -> int:
    runtime = build_or_report(args.config)
    if runtime is None:
        return EXIT_CONFIG
    try:
        ctx = SigningContext(
            now_ms=parse_time(args.at) if args.at else SigningContext.now().now_ms,
            nonce=args.nonce,  # None: each use draws its own
        )
        headers = parse_headers(args.header)
        body = read_data(args.data, args.data_binary)
        method = (args.method or ("POST" if body is not None else "GET")).upper()
        match = find_route(runtime, args.url, args.route, headers.get("Host"))
    except ValueError as err:
        print(f"signing-proxy sign: {err}", file=sys.stderr)
        return EXIT_USAGE
    route = match.route
    if body is not None and "Content-Length" not in headers:
        headers["Content-Length"] = str(len(body))
    query = parse_target(_origin_form(args.url)).query
    needs_body = route.signer.needs_body(method)
    upstream = prepare_upstream(
        match, method, query, headers, (body or b"") if needs_body else None
    )
    fetched = None
    explanation: dict[str, object] | None = None
    try:
        if args.fetch_token:
            fetched = asyncio.run(route.signer.fetch_for_display())
        if args.explain and isinstance(route.signer, ExplainingSigner):
            result, explained = route.signer.explain(upstream, ctx)
            explanation = explained.as_dict()
        else:
            result = route.signer.sign_for_display(upstream, ctx)
    except CredentialsUnavailable as err:
        print(f"signing-proxy sign: no credentials: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, SigningRefused) as err:
        print(f"signing-proxy sign: the request cannot be signed: {err}", file=sys.stderr)
        return EXIT_USAGE
    if fetched is not None:
        result = dataclasses.replace(result, details={**result.details, "token_fetch": fetched})
    sent_body = result.request.body if result.request.body is not None else body
    redact = _redactor(route.config.signer, route.signer)
    if args.explain and explanation is None:
        explanation = {"note": f"scheme {route.signer.scheme} has no step-by-step explanation"}
    if args.json:
        print(_as_json(result, sent_body, redact, explanation))
    else:
        text = _as_text(route.name, result, sent_body)
        if explanation is not None:
            text += "\n" + _explanation_text(explanation)
        print(redact(text))
    return 0


@runtime_checkable
class ExplainingSigner(Protocol):
    """A scheme that can say how it signed, step by step (`sign --explain`): `hmac`."""

    def explain(self, request: UpstreamRequest, ctx: SigningContext) -> tuple[SignResult, Any]: ...


def _explanation_text(explanation: dict[str, object]) -> str:
    lines = ["", "== explain =="]
    for key, value in explanation.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {name} = {item}" for name, item in value.items()] or ["  (none)"]
        elif isinstance(value, list):
            lines.append(f"{key}: {', '.join(map(str, value)) or '(none)'}")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def parse_time(text: str) -> int:
    """Epoch milliseconds, or ISO 8601 (UTC when no offset is given) -> epoch milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--at {text!r}: use epoch milliseconds or ISO 8601 such as 2023-11-14T22:13:20.123Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_headers(lines: list[str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"-H {line!r}: use 'Name: value'")
        headers.add(name.strip(), value.strip())
    return headers


def read_data(data: str | None, data_binary: str | None) -> bytes | None:
    if data is not None:
        return data.encode()
    if data_binary is None:
        return None
    if data_binary.startswith("@"):
        try:
            return Path(data_binary[1:]).read_bytes()
        except OSError as err:
            raise ValueError(f"--data-binary {data_binary}: {err.strerror}") from None
    return data_binary.encode()


def find_route(
    runtime: Runtime, url: str, route_name: str | None, host_header: str | None
) -> RouteMatch:
    try:
        target = parse_target(url)
    except TargetError as err:
        raise ValueError(f"{url}: {err}") from None
    if route_name is not None:
        route = runtime.table.by_name.get(route_name)
        if route is None:
            raise ValueError(f"no route named {route_name!r}")
        rest = route.strip_prefix(target.path)
        path = target.path if rest is None else rest
        return RouteMatch(route, (route.upstream_base_path + path) or "/")
    # As a forward proxy would see it, then as a reverse proxy with the URL's host as Host.
    match = runtime.table.match(target, host_header)
    if match is None and target.is_absolute:
        origin = parse_target(_origin_form(url))
        match = runtime.table.match(origin, host_header or target.host)
    if match is None:
        raise ValueError(f"no route matches {url} (use --route NAME to pick one)")
    return match


def _origin_form(url: str) -> str:
    if "://" not in url:
        return url
    rest = url.split("://", 1)[1]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    path = rest[cut:]
    return path if path.startswith("/") else "/" + path


def _as_json(
    result: SignResult,
    body: bytes | None,
    redact: Callable[[str], str],
    explanation: dict[str, object] | None = None,
) -> str:
    request = result.request
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        name = str(key)  # multidict's istr is not a str orjson accepts as a key
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    document: dict[str, object] = {
        "method": request.method,
        "url": redact(request.url),
        "headers": {name: redact(value) for name, value in headers.items()},
        "body_b64": base64.b64encode(body).decode() if body is not None else None,
        "string_to_sign": redact(result.string_to_sign),
        **{key: redact(value) for key, value in result.details.items()},
    }
    if explanation is not None:
        # Redacted as values, before JSON escapes a secret's `"` or `\` out of redact's sight.
        document["explain"] = _redact_values(explanation, redact)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


def _redact_values(value: object, redact: Callable[[str], str]) -> object:
    """`value` (an explanation: dicts, lists, strings, numbers) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(key)): _redact_values(item, redact) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_values(item, redact) for item in value]
    return value


def _as_text(route: str, result: SignResult, body: bytes | None) -> str:
    request = result.request
    lines = [f"# route: {route}", "", "== request ==", f"{request.method} {request.url}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    if body:
        lines.append("")
        try:
            lines.append(body.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(f"({len(body)} bytes of binary data; use --json for base64)")
    lines += ["", "== string to sign ==", result.string_to_sign or "(this scheme signs nothing)"]
    for key, value in result.details.items():
        lines += ["", f"== {key.replace('_', ' ')} ==", value]
    return "\n".join(lines)


def _redactor(config: SignerConfig, signer: Signer[Any]) -> Callable[[str], str]:
    revealed = [
        (value.reveal(), name)
        for name in type(config).model_fields
        if isinstance(value := getattr(config, name), Secret) and name not in signer.public_fields
    ]
    # A secret sent in the query (query-key) is printed percent-encoded: redact that form too.
    encoded = [(quote(value, safe=safe), name) for value, name in revealed for safe in ("-._~", "")]
    # The hmac explanation shows byte strings escaped (`\` doubled, controls as `\x..`).
    encoded += [(escape_bytes(value.encode()), name) for value, name in revealed]
    secrets = sorted(set(revealed + encoded), key=lambda pair: -len(pair[0]))

    def redact(text: str) -> str:
        for value, name in secrets:
            text = text.replace(value, f"<redacted {name}>")
        return text

    return redact
