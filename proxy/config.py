"""The config file: YAML -> a validated, immutable model, or every problem with its key path.

Unknown keys are errors (a typo must not silently disable a setting), secrets are resolved at
load time (`proxy.secrets`), and each problem carries the YAML line it comes from.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    field_validator,
    model_validator,
)
from yarl import URL

from proxy.http import check_settable_header
from proxy.interception.config import InterceptionConfig, TunnelsConfig
from proxy.secrets import HeaderSecretValue
from proxy.signers import AnySignerConfig, SignerConfig, plugin_errors, scheme_names
from proxy.signers.base import KEY_PATH_CTX
from proxy.upstream_tls import TlsConfig
from proxy.yamlsource import YamlDocument, YamlError, load_yaml

DEFAULT_LISTEN: Final = "127.0.0.1:8080"
DEFAULT_ADMIN: Final = "127.0.0.1:9090"
DEFAULT_MAX_BODY_BYTES: Final = 10 * 1024 * 1024
DEFAULT_SPOOL_THRESHOLD_BYTES: Final = 1024 * 1024
DEFAULT_MAX_UPSTREAM_CONNECTIONS: Final = 100
# A spooled body costs disk, not memory: room for S3's largest single PUT (5 GiB).
DEFAULT_MAX_SPOOLED_BODY_BYTES: Final = 5 * 1024 * 1024 * 1024

_ROUTE_NAME = re.compile(r"^[a-z0-9_-]+$")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_host_port(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port). Raises ValueError with a readable reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def _check_host_port(value: str) -> str:
    parse_host_port(value)
    return value


def _check_hostname(name: str, *, wildcard_ok: bool) -> None:
    labels = name.split(".")
    if wildcard_ok and labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            raise ValueError(f"{name!r}: a wildcard needs a domain under it, e.g. *.example.com")
    try:
        ipaddress.ip_address(name.strip("[]"))
        return
    except ValueError:
        pass
    if not labels or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{name!r} is not a valid host name")


class MatchConfig(_Model):
    """Which requests a route takes. Both given: both must match."""

    host: str | None = Field(
        default=None,
        description="Exact host or *.example.com (case-insensitive), with an optional :port.",
    )
    path_prefix: str | None = Field(
        default=None,
        description="A path prefix such as /devresults, matched on a segment boundary and "
        "stripped before forwarding.",
    )

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        host, port = value, None
        if ":" in value and not value.endswith("]"):
            host, _, port = value.rpartition(":")
            if not port.isdigit() or not 0 < int(port) <= 65535:
                raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
        _check_hostname(host, wildcard_ok=True)
        return value

    @field_validator("path_prefix")
    @classmethod
    def _valid_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with /")
        if "?" in value or "#" in value:
            raise ValueError(f"{value!r} must be a path only (no ? or #)")
        segments = value.strip("/").split("/")
        if any(segment in {".", ".."} for segment in segments):
            raise ValueError(f"{value!r} must not contain . or .. segments")
        return value.rstrip("/")  # "/" matches everything: the empty prefix

    @model_validator(mode="after")
    def _something_to_match(self) -> MatchConfig:
        if self.host is None and self.path_prefix is None:
            raise ValueError("match needs host and/or path_prefix (use path_prefix: / for all)")
        return self


class TimeoutConfig(_Model):
    connect: float = Field(default=10.0, gt=0, description="Seconds to connect upstream.")
    read: float | None = Field(
        default=60.0,
        gt=0,
        description="Seconds the upstream may stay silent (before headers or between body "
        "chunks); null disables.",
    )
    total: float | None = Field(
        default=None,
        gt=0,
        description="Seconds for the whole exchange, body included; null (default) is no "
        "limit, so long downloads and event streams work.",
    )
    client_body: float | None = Field(
        default=60.0,
        gt=0,
        description="Seconds the app may pause while sending its request body (between two "
        "reads, as nginx's client_body_timeout); then 408 client_body_timeout. null disables.",
    )


class HeadersConfig(_Model):
    set: dict[str, str] = Field(
        default_factory=dict, description="Headers set on every request, before signing."
    )
    remove: list[str] = Field(
        default_factory=list, description="Headers removed from every request, before signing."
    )

    @field_validator("set")
    @classmethod
    def _valid_set(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            check_settable_header(name)
            if "\r" in header_value or "\n" in header_value:
                raise ValueError(f"the value of {name} must be one line")
        return value

    @field_validator("remove")
    @classmethod
    def _valid_remove(cls, value: list[str]) -> list[str]:
        for name in value:
            check_settable_header(name)
        return value


class RateLimitConfig(_Model):
    requests_per_second: float = Field(gt=0, description="Sustained requests per second.")
    burst: int | None = Field(
        default=None, ge=1, description="Requests allowed at once above the rate (default: rps)."
    )

    @model_validator(mode="after")
    def _default_burst(self) -> RateLimitConfig:
        if self.burst is None:
            object.__setattr__(self, "burst", max(1, math.ceil(self.requests_per_second)))
        return self


# TRACE is idempotent but refused at the door (proxy/admission.py): never retried either.
IDEMPOTENT_METHODS: Final = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
RetryOn = Literal["connect_error", 502, 503, 504]


def _default_retry_on() -> list[RetryOn]:
    return ["connect_error", 502, 503, 504]


class RetryConfig(_Model):
    """Retries that sign every attempt afresh (new time, new nonce)."""

    attempts: int = Field(ge=1, le=10, description="Attempts in all, the first included.")
    on: list[RetryOn] = Field(
        default_factory=_default_retry_on,
        description="What is retried: connect_error (nothing reached the upstream), and these "
        "statuses, from the upstream or the proxy's own 502/504 for a failed exchange.",
    )
    methods: list[str] = Field(
        default_factory=lambda: list(IDEMPOTENT_METHODS),
        description="Methods that may be retried (default: the idempotent ones).",
    )
    backoff_initial: float = Field(default=0.1, gt=0, description="Seconds before retry 1.")
    backoff_max: float = Field(default=2.0, gt=0, description="Upper bound of one wait.")

    @field_validator("methods")
    @classmethod
    def _upper(cls, methods: list[str]) -> list[str]:
        upper = [method.upper() for method in methods]
        if echoing := sorted({"TRACE", "TRACK"} & set(upper)):
            raise ValueError(f"{', '.join(echoing)} is refused by the proxy, never retried")
        return upper


class AccessConfig(_Model):
    """Who may use the proxy (shared deployments). Both given: both must pass."""

    allow_networks: list[IPvAnyNetwork] = Field(
        default_factory=list, description="Client networks (CIDR) allowed; others get 403."
    )
    proxy_token: HeaderSecretValue | None = Field(
        default=None,
        description="Token clients must send as Proxy-Authorization (Bearer, or Basic "
        "password); others get 407.",
    )

    @model_validator(mode="after")
    def _some_rule(self) -> AccessConfig:
        if not self.allow_networks and self.proxy_token is None:
            raise ValueError("access needs allow_networks and/or proxy_token")
        return self


class RouteConfig(_Model):
    name: str = Field(description="Unique route name [a-z0-9_-]+: the label in metrics and logs.")
    match: MatchConfig
    upstream: str | None = Field(
        default=None,
        description="Absolute http(s):// base URL, may carry a base path; defaults to "
        "https://<match.host> when that host is exact.",
    )
    signer: AnySignerConfig
    timeout: TimeoutConfig = TimeoutConfig()
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        gt=0,
        description="Largest body a scheme that reads the body into memory accepts (413 "
        "above). Set explicitly, it also caps spooled bodies.",
    )
    max_spooled_body_bytes: int = Field(
        default=DEFAULT_MAX_SPOOLED_BODY_BYTES,
        gt=0,
        description="Largest body a scheme that hashes it incrementally (devo, devengo, "
        "aws-sigv4 signed payloads, the http-message-signatures and http-signatures-cavage "
        "body digests) accepts; above spool_threshold_bytes it goes to $TMPDIR, "
        "which must have room for it (413 above; default 5 GiB, S3's largest single PUT).",
    )
    spool_threshold_bytes: int = Field(
        default=DEFAULT_SPOOL_THRESHOLD_BYTES,
        ge=0,
        description="Bodies a scheme hashes incrementally (devo, devengo, aws-sigv4, "
        "http-message-signatures, http-signatures-cavage) go to a temporary file above this "
        "size instead of memory.",
    )
    tls: TlsConfig = TlsConfig()
    headers: HeadersConfig = HeadersConfig()
    max_concurrent: int | None = Field(
        default=None, gt=0, description="Requests in flight at once; 503 above (default: none)."
    )
    max_upstream_connections: int = Field(
        default=DEFAULT_MAX_UPSTREAM_CONNECTIONS,
        gt=0,
        le=100_000,
        description="Upstream connections this route may use at once (each request holds one "
        "until its response is relayed); a request waits up to timeout.connect for one, then "
        "503.",
    )
    rate_limit: RateLimitConfig | None = Field(
        default=None, description="Token bucket; 429 with Retry-After above (default: none)."
    )
    retries: RetryConfig | None = Field(
        default=None, description="Opt-in retries, each attempt signed afresh (default: none)."
    )
    intercept: bool = Field(
        default=False,
        description="Intercept HTTPS: answer `CONNECT host:443` (or match.host's port) with a "
        "TLS tunnel under a certificate from interception's CA, and sign the requests inside. "
        "Needs an exact or wildcard match.host and the interception section.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _ROUTE_NAME.match(value):
            raise ValueError(f"{value!r} must match [a-z0-9_-]+")
        return value

    @field_validator("upstream")
    @classmethod
    def _valid_upstream(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = URL(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a URL: {exc}") from None
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError(f"{value!r} must be an absolute http:// or https:// URL")
        if url.user or url.password:
            raise ValueError("credentials in the upstream URL are not allowed; use a signer")
        if url.raw_query_string or url.raw_fragment:
            raise ValueError(f"{value!r} must not have a query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _default_upstream(self) -> RouteConfig:
        if self.upstream is None:
            host = self.match.host
            if host is None or host.startswith("*."):
                raise ValueError("upstream is required unless match.host is an exact host name")
            object.__setattr__(self, "upstream", f"https://{host}")
        # A scheme may complete its settings from the upstream host (AWS: service and region).
        upstream_host = self.upstream_url.raw_host or ""
        object.__setattr__(self, "signer", self.signer.with_upstream_host(upstream_host))
        return self

    def body_limit(self, *, spooled: bool) -> tuple[int, str]:
        """The largest request body this route reads for signing, and the key that sets it.

        A body held in memory is capped by `max_body_bytes`. A body the scheme can hash as it
        arrives (and spool to disk) by `max_spooled_body_bytes`, and also by `max_body_bytes`
        when the route sets that explicitly.
        """
        if not spooled:
            return self.max_body_bytes, "max_body_bytes"
        if (
            "max_body_bytes" in self.model_fields_set
            and self.max_body_bytes < self.max_spooled_body_bytes
        ):
            return self.max_body_bytes, "max_body_bytes"
        return self.max_spooled_body_bytes, "max_spooled_body_bytes"

    @property
    def upstream_url(self) -> URL:
        assert self.upstream is not None  # set by the validator
        return URL(self.upstream)


class RequestLimitsConfig(_Model):
    """What the HTTP parser accepts before anything else runs; over a limit is a 400."""

    max_line_bytes: int = Field(
        default=8190, ge=256, le=1_048_576, description="Request line (method, target, version)."
    )
    max_field_bytes: int = Field(
        default=8190, ge=256, le=1_048_576, description="One header name or value."
    )
    max_headers: int = Field(default=128, ge=8, le=10_000, description="Header lines.")
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a complete request head, from the "
        "connection's start or from the first byte of a later request; then the connection "
        "is closed.",
    )


class Config(_Model):
    listen: str = Field(default=DEFAULT_LISTEN, description="Proxy address HOST:PORT.")
    admin: str = Field(
        default=DEFAULT_ADMIN, description="Admin address HOST:PORT (/metrics, /healthz, /readyz)."
    )
    request_limits: RequestLimitsConfig = Field(
        default_factory=RequestLimitsConfig,
        description="HTTP parser limits (a change takes effect on restart).",
    )
    access: AccessConfig | None = Field(
        default=None, description="Client networks and/or a proxy token (shared deployments)."
    )
    tunnels: TunnelsConfig = Field(
        default_factory=TunnelsConfig,
        description="Bounds of CONNECT tunnels (CONNECT host:80 and intercepted HTTPS).",
    )
    interception: InterceptionConfig | None = Field(
        default=None,
        description="The CA that signs host certificates for routes with intercept: true.",
    )
    routes: list[RouteConfig] = Field(min_length=1, description="First match wins.")

    _check_listen = field_validator("listen", "admin")(_check_host_port)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for route in self.routes:
            if route.name in seen:
                raise ValueError(f"duplicate route name {route.name!r}")
            seen.add(route.name)
        return self


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f" {self.path}:" if self.path else ""
        return f"{self.line}:{where} {self.message}"


class ConfigError(Exception):
    """Every problem in a config file; `str()` lists them one per line, never a secret."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}:{p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class InvalidSetting(ValueError):
    """A setting that validated but cannot be used when the config is built (a CA file that is
    not PEM, a signer refusing its settings): `key` is its path, the message never a secret."""

    def __init__(self, key: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@contextmanager
def setting_at(*steps: str | int) -> Iterator[None]:
    """Attribute a failure while building from the config to the key it comes from.

    Nested uses compose the path (`routes[1]` around `tls` around a `ca_file` failure gives
    `routes[1].tls.ca_file`). An `InvalidSetting` raised inside gets the steps prepended; a
    `ValueError` keeps its message (by contract, builders' messages never hold a secret);
    anything else is named by its type only.
    """
    try:
        yield
    except InvalidSetting as err:
        raise InvalidSetting((*steps, *err.key), err.message) from err
    except ValueError as err:
        raise InvalidSetting(steps, str(err)) from err
    except OSError as err:  # a file the setting names: the message is its path and reason
        raise InvalidSetting(steps, f"cannot be used: {err}") from err
    except Exception as err:
        raise InvalidSetting(steps, f"cannot be used ({type(err).__name__})") from err


def load_config(path: str | Path) -> Config:
    return parse_config(read_config_text(path), str(path))


def read_config_text(path: str | Path) -> str:
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [ConfigProblem("", 1, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [ConfigProblem("", 1, f"cannot read: {exc}")]) from None


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        doc = load_yaml(text)
    except YamlError as exc:
        problems = [ConfigProblem(format_path(p.path), p.line, p.message) for p in exc.problems]
        raise ConfigError(source, problems) from None
    problems = [ConfigProblem(format_path(p.path), p.line, p.message) for p in doc.problems]
    if not isinstance(doc.data, dict):
        problems.append(ConfigProblem("", 1, "the config must be a YAML mapping"))
        raise ConfigError(source, problems)
    problems += _duplicate_route_names(doc) + _intercept_problems(doc)
    config = None
    try:
        config = Config.model_validate(doc.data)
    except ValidationError as exc:
        problems += [p for p in _problems(exc, doc) if p not in problems]
    if config is not None and not problems:
        problems += _constrained_hosts(config, doc)
    if problems or config is None:
        raise ConfigError(source, sorted(problems, key=lambda p: p.line))
    return config


def _duplicate_route_names(doc: YamlDocument) -> list[ConfigProblem]:
    # Checked on the raw data too, so it is reported together with every other problem.
    routes = doc.data.get("routes")
    if not isinstance(routes, list):
        return []
    problems, seen = [], set()
    for index, route in enumerate(routes):
        name = route.get("name") if isinstance(route, dict) else None
        if isinstance(name, str) and name in seen:
            path = ("routes", index, "name")
            message = f"duplicate route name {name!r}"
            problems.append(ConfigProblem(format_path(path), doc.line_of(path), message))
        seen.add(name)
    return problems


def _intercept_problems(doc: YamlDocument) -> list[ConfigProblem]:
    """`intercept: true` needs a route that names its host, and the CA (checked on the raw
    data, so these are reported with the key and line, together with every other problem)."""
    routes = doc.data.get("routes")
    if not isinstance(routes, list):
        return []
    problems = []
    for index, route in enumerate(routes):
        if not isinstance(route, dict) or route.get("intercept") is not True:
            continue
        path = ("routes", index, "intercept")
        match = route.get("match")
        host = match.get("host") if isinstance(match, dict) else None
        if not isinstance(host, str) or not host:
            message = "intercept needs match.host (an exact host or *.example.com)"
            problems.append(ConfigProblem(format_path(path), doc.line_of(path), message))
        elif doc.data.get("interception") is None:
            message = "intercept needs the interception section (ca_cert and ca_key)"
            problems.append(ConfigProblem(format_path(path), doc.line_of(path), message))
    return problems


def _constrained_hosts(config: Config, doc: YamlDocument) -> list[ConfigProblem]:
    """An intercepted host the CA's name constraints exclude: every client would refuse its
    certificate."""
    if config.interception is None:
        return []
    from proxy.interception.ca import CertificateAuthority

    interception = config.interception
    ca = CertificateAuthority.from_pem(interception.ca_cert.reveal(), interception.ca_key.reveal())
    problems = []
    for index, route in enumerate(config.routes):
        if not route.intercept or route.match.host is None:
            continue
        host = route.match.host
        if not host.endswith("]") and ":" in host:
            host = host.rpartition(":")[0]
        if not ca.permits(host.removeprefix("*.")):
            path = ("routes", index, "match", "host")
            message = f"{host} is outside the name constraints of interception.ca_cert"
            problems.append(ConfigProblem(format_path(path), doc.line_of(path), message))
    return problems


def _problems(exc: ValidationError, doc: YamlDocument) -> list[ConfigProblem]:
    problems = []
    # include_input=False: the input may be a secret literal.
    for error in exc.errors(include_input=False, include_url=False):
        path = _data_path(doc.data, error["loc"])
        # A scheme may point below the field that failed (hmac: `after_sign.headers.X`).
        path += tuple((error.get("ctx") or {}).get(KEY_PATH_CTX, ()))
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key {path[-1]!r}"
        elif error["type"] == "missing":
            message = f"{path[-1]} is required"
        elif error["type"] == "union_tag_invalid":
            known = ", ".join(scheme_names())
            tag = error["ctx"]["tag"]
            message = f"unknown scheme {tag!r} (known: {known})"
            if tag in plugin_errors():
                message += f"; its plugin failed to load: {plugin_errors()[tag]}"
        elif error["type"] == "union_tag_not_found":
            message = f"scheme is required (one of: {', '.join(scheme_names())})"
        if error["type"] == "value_error" and "duplicate route name" in message:
            continue  # reported with its own line by _duplicate_route_names
        problems.append(ConfigProblem(format_path(path), doc.line_of(path), message))
    return problems


def _data_path(data: Any, loc: tuple[int | str, ...]) -> tuple[str | int, ...]:
    """Pydantic's error location -> the path in the YAML data.

    Pydantic inserts the union member (the `scheme` tag, or a type name such as
    `function-after[...]`) into the location; those steps do not exist in the data.
    """
    path: list[str | int] = []
    node: Any = data
    for step in loc:
        if _has_step(node, step):
            path.append(step)
            node = node[step]
        elif isinstance(node, dict) and (step == node.get("scheme") or "[" in str(step)):
            continue
        else:
            path.append(step)
            node = None
    return tuple(path)


def _has_step(node: Any, step: int | str) -> bool:
    if isinstance(node, dict):
        return step in node
    return isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)


def format_path(path: tuple[str | int, ...]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def describe_signer(config: SignerConfig) -> str:
    """`scheme (field=source, ...)`: where each credential comes from, never its value."""
    from proxy.secrets import Secret

    parts = []
    for name in type(config).model_fields:
        value = getattr(config, name)
        if name == "scheme" or value is None:
            continue
        shown = value.source if isinstance(value, Secret) else str(value)
        parts.append(f"{name}={shown}")
    return f"{config.scheme} ({', '.join(parts)})" if parts else config.scheme
