"""Request -> route. First match wins; no match means the request is refused, never forwarded.

Two request shapes arrive:
- origin-form (`GET /devresults/api/awards`, reverse-proxy mode): matched by `path_prefix`
  and/or the `Host` header;
- absolute-form (`GET http://demo.devresults.com/api/awards`, what a client sends through
  `HTTP_PROXY`): matched by the URI's host (only routes with `match.host` take these).

Paths are handled raw (percent-encoded as received) so the upstream gets the app's bytes; a path
with a `.`/`..` segment, literal or percent-encoded, is refused, so a request can never reach a
path outside its route's upstream base path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.admission import Authority, BadAuthority, split_host_port
from proxy.config import RouteConfig
from proxy.forward import UpstreamOptions
from proxy.limits import RouteLimits
from proxy.retry import RetryPolicy
from proxy.signers import Signer

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ENCODED_DOT_OR_SLASH = re.compile(r"%(2e|2f|5c|3b)", re.IGNORECASE)


class TargetError(ValueError):
    """The request target cannot be routed safely (400)."""


@dataclass(frozen=True, slots=True)
class RequestTarget:
    path: str
    query: str
    has_query: bool
    host: str | None = None  # from an absolute-form URI (forward-proxy mode)
    scheme: str | None = None

    @property
    def is_absolute(self) -> bool:
        return self.host is not None


def parse_target(raw: str) -> RequestTarget:
    """Split a raw request target. Raises TargetError for a path that could escape its route."""
    scheme = host = None
    lowered = raw[:8].lower()
    if lowered.startswith(("http://", "https://")):
        scheme, _, rest = raw.partition("://")
        scheme = scheme.lower()
        authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
        authority, rest = (rest, "/") if authority_end < 0 else _split(rest, authority_end)
        if rest.startswith("?"):
            rest = "/" + rest
        if "@" in authority or not authority:
            raise TargetError("the request URI must be http(s)://host[:port]/path")
        host = authority.lower()
        try:
            split_host_port(host)
        except BadAuthority as err:
            raise TargetError(f"invalid authority in the request URI: {err}") from None
        raw = rest
    elif not raw.startswith("/"):
        raise TargetError("the request target must be a path or an absolute http(s) URI")
    path, has_query, query = raw.partition("?")
    path = path.split("#", 1)[0]
    _check_path(path)
    return RequestTarget(path, query.split("#", 1)[0], bool(has_query), host, scheme)


def _split(text: str, index: int) -> tuple[str, str]:
    return text[:index], text[index:]


def _check_path(path: str) -> None:
    if "%" not in path and "\\" not in path and "/." not in path:
        return  # the common case: no segment can be `.` or `..`, encoded or not
    decoded = _ENCODED_DOT_OR_SLASH.sub(lambda m: chr(int(m.group(1), 16)), path)
    for segment in re.split(r"[/\\]", decoded):
        # Up to the first ';': servlet containers read `..;x` as a `..` segment.
        if segment.split(";", 1)[0] in {".", ".."}:
            raise TargetError("paths with . or .. segments are refused")


@dataclass(frozen=True, slots=True)
class Route:
    """A route config compiled for one config load: how it matches, its signer, its upstream
    client settings, its limits (with their counters) and its retry policy."""

    config: RouteConfig
    signer: Signer[Any]
    options: UpstreamOptions
    limits: RouteLimits
    retry: RetryPolicy | None
    host: str | None  # exact host, or the ".example.com" suffix of a wildcard
    wildcard: bool
    port: int | None
    prefix: str | None
    upstream_scheme: str
    upstream_host: str  # host[:port] as sent in the Host header
    upstream_base_path: str
    # Lower-cased names the route's header edits replace or remove (`headers.set`/`.remove`).
    edited_headers: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.config.name

    @classmethod
    def compile(
        cls, config: RouteConfig, signer: Signer[Any], previous: UpstreamOptions | None = None
    ) -> Route:
        """`previous`: the options of this route before a reload that left it unchanged, kept
        (with their pooled connections) while its TLS files are unchanged too."""
        host = port = None
        wildcard = False
        if config.match.host:
            host, port = split_host_port(config.match.host)
            if host.startswith("*."):
                host, wildcard = host[1:], True
        url = config.upstream_url
        default_port = _DEFAULT_PORTS[url.scheme]
        authority = url.raw_host or ""
        if ":" in authority:  # IPv6 literal
            authority = f"[{authority}]"
        if url.port and url.port != default_port:
            authority = f"{authority}:{url.port}"
        return cls(
            config=config,
            signer=signer,
            options=UpstreamOptions.for_route(config, previous),
            limits=RouteLimits.for_route(config),
            retry=RetryPolicy.compile(config.retries),
            host=host,
            wildcard=wildcard,
            port=port,
            prefix=config.match.path_prefix,
            upstream_scheme=url.scheme,
            upstream_host=authority,
            upstream_base_path=url.raw_path.rstrip("/"),
            edited_headers=frozenset(
                name.lower() for name in (*config.headers.remove, *config.headers.set)
            ),
        )

    def matches_host(self, host: str, port: int | None) -> bool:
        assert self.host is not None
        if self.port is not None and port != self.port:
            return False
        if self.wildcard:
            return host.endswith(self.host)
        return host == self.host

    def strip_prefix(self, path: str) -> str | None:
        """The path after the prefix, or None when the prefix does not match on a boundary."""
        prefix = self.prefix
        if not prefix:
            return path
        if path == prefix:
            return ""
        if path.startswith(prefix) and path[len(prefix)] == "/":
            return path[len(prefix) :]
        return None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    path: str  # the path to send upstream (base path + what follows the prefix)


class RouteTable:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self.by_name = {route.name: route for route in self.routes}

    def match(self, target: RequestTarget, host_header: str | None) -> RouteMatch | None:
        """The route of a request to `target` with this `Host` header (as sent)."""
        authority = None
        if host_header and not target.is_absolute:
            try:
                host, port = split_host_port(host_header.strip())
            except BadAuthority:  # admission refuses these first; never a route by accident
                return None
            authority = (host.lower(), port)
        return self.match_authority(target, authority)

    def match_authority(
        self, target: RequestTarget, authority: Authority | None
    ) -> RouteMatch | None:
        """The route of a request to `target` whose `Host` header is `authority`, as admission
        parsed it (`check_host`): not parsed again."""
        if target.is_absolute:
            assert target.host is not None
            assert target.scheme is not None
            host, port = split_host_port(target.host)
            port = port or _DEFAULT_PORTS[target.scheme]
        elif authority is not None:
            host, port = authority
        else:
            host, port = None, None
        for route in self.routes:
            if route.host is not None:
                if host is None or not route.matches_host(host, port):
                    continue
            elif target.is_absolute:
                continue  # forward-proxy requests only go to routes that name their host
            rest = route.strip_prefix(target.path)
            if rest is None:
                continue
            return RouteMatch(route, (route.upstream_base_path + rest) or "/")
        return None

    def match_tunnel(
        self, path: str, host: str, port: int, *, intercepted: bool
    ) -> RouteMatch | None:
        """A request inside a CONNECT tunnel to `host:port`: the first route that takes the
        tunnel (`takes_tunnel`) and whose prefix matches `path`."""
        for route in self.routes:
            if not takes_tunnel(route, host, port, intercepted=intercepted):
                continue
            rest = route.strip_prefix(path)
            if rest is not None:
                return RouteMatch(route, (route.upstream_base_path + rest) or "/")
        return None


def takes_tunnel(route: Route, host: str, port: int, *, intercepted: bool) -> bool:
    """Whether `route` takes the requests of a tunnel to `host:port`: a route that names its
    host (as for forward-proxy requests); for an intercepted tunnel only a route with
    `intercept: true`, and one whose `match.host` names no port only on port 443."""
    if route.host is None:
        return False
    if intercepted and (not route.config.intercept or (route.port is None and port != 443)):
        return False
    return route.matches_host(host, port)
