"""The signature base of RFC 9421 (HTTP Message Signatures), built from a request.

Pure functions and immutable specs: `parse_component` turns a config string such as
`@query-param;name="Pet"` into a `Component` once at config load; `signature_base` computes each
covered component's value from the request and lays out the base (RFC 9421 2.5). Structured
fields (component identifiers, signature parameters, `sf`/`key`/`bs` values, the headers) are
parsed and serialised by `http-sf`, never by hand.

Only the request side of the RFC is here: `@status` and the `req` parameter belong to responses,
`tr` to trailers, which a proxy signing before it sends has not got.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qsl, quote, unquote

import http_sf
from http_sf.innerlist import ser_innerlist, ser_item_or_inner_list
from http_sf.item import ser_item
from http_sf.types import ItemType, ParamsType
from multidict import CIMultiDictProxy

from proxy.http import host_to_sign, is_field_name
from proxy.signers.base import SigningRefused, UpstreamRequest

StructuredType = Literal["item", "list", "dictionary"]

DERIVED: Final = frozenset(
    {
        "@method",
        "@target-uri",
        "@authority",
        "@scheme",
        "@request-target",
        "@path",
        "@query",
        "@query-param",
    }
)
_RESPONSE_ONLY: Final = frozenset({"@status"})

# Fields whose structured type is registered (IANA HTTP Field Name registry, "Structured Type"
# column, RFC 9651 and the RFCs that define them). Others need `structured_fields:` in the route.
REGISTERED_STRUCTURED_FIELDS: Final[Mapping[str, StructuredType]] = {
    "accept-ch": "list",
    "cache-status": "list",
    "cdn-cache-control": "dictionary",
    "client-cert": "item",
    "client-cert-chain": "list",
    "content-digest": "dictionary",
    "cross-origin-embedder-policy": "item",
    "cross-origin-embedder-policy-report-only": "item",
    "cross-origin-opener-policy": "item",
    "cross-origin-opener-policy-report-only": "item",
    "origin-agent-cluster": "item",
    "priority": "dictionary",
    "proxy-status": "list",
    "repr-digest": "dictionary",
    "signature": "dictionary",
    "signature-input": "dictionary",
    "want-content-digest": "dictionary",
    "want-repr-digest": "dictionary",
}

# Fields a covered component cannot name: the proxy rewrites or drops them in transit
# (hop-by-hop), or they carry the signature itself.
UNSIGNABLE_FIELDS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "signature",
        "signature-input",
    }
)


class MissingComponent(SigningRefused, ValueError):
    """The request lacks (or has ambiguously) a component the route covers: the client's fault,
    a 400. Also a ValueError, which `signing-proxy sign` reports as a refusal."""

    status = 400
    code = "missing_component"


@dataclass(frozen=True, slots=True)
class Component:
    """One covered component: its name, parameters and serialised identifier."""

    name: str
    params: tuple[tuple[str, str | bool], ...]
    identifier: str  # as it appears in the base and in Signature-Input: `"@path"`

    @property
    def item(self) -> ItemType:
        params: ParamsType = dict(self.params)
        return (self.name, params)

    def param(self, key: str) -> str | bool | None:
        return next((value for name, value in self.params if name == key), None)


def parse_component(
    text: str, structured_fields: Mapping[str, StructuredType] | None = None
) -> Component:
    """`@method`, `content-type;sf`, `"@query-param";name="Pet"` -> a Component.

    Raises ValueError naming what is wrong. Field names are lower-cased (RFC 9421 2.1).
    """
    text = text.strip()
    if not text.startswith('"'):
        name, sep, rest = text.partition(";")
        text = f'"{name.strip()}"' + (f";{rest}" if sep else "")
    try:
        parsed = http_sf.parse(text.encode(), tltype="item")
    except http_sf.StructuredFieldError as err:
        raise ValueError(f"{text!r} is not a component identifier: {err}") from None
    assert isinstance(parsed, tuple)
    value, raw_params = parsed
    if not isinstance(value, str) or not value:
        raise ValueError(f"{text!r}: a component name is a string such as @method or date")
    params: dict[str, str | bool] = {}
    for key, param in raw_params.items():
        if not isinstance(param, str | bool):
            raise ValueError(f"{text!r}: parameter {key} must be a string or a flag")
        params[key] = param
    name = value if value.startswith("@") else value.lower()
    if name.startswith("@"):
        _check_derived(name, params)
    else:
        _check_field(name, params, structured_fields or {})
    component = Component(name, tuple(params.items()), "")
    return dataclasses.replace(component, identifier=ser_item(component.item))


def _check_derived(name: str, params: Mapping[str, str | bool]) -> None:
    if name in _RESPONSE_ONLY:
        raise ValueError(f"{name} applies to responses only; the proxy signs requests")
    if name not in DERIVED:
        known = ", ".join(sorted(DERIVED))
        raise ValueError(f"unknown derived component {name} (known: {known})")
    if name == "@query-param":
        if set(params) != {"name"} or not isinstance(params["name"], str):
            raise ValueError('@query-param needs exactly one parameter: name="..."')
        canonical = _form_encode(unquote(params["name"]))
        if canonical != params["name"]:
            raise ValueError(
                f'@query-param;name="{params["name"]}": write the name percent-encoded as '
                f'RFC 9421 2.2.8 does: name="{canonical}"'
            )
    elif params:
        raise ValueError(f"{name} takes no parameters")


def _check_field(
    name: str, params: Mapping[str, str | bool], structured: Mapping[str, StructuredType]
) -> None:
    if not is_field_name(name):
        raise ValueError(f"{name!r} is not an HTTP field name")
    if name in UNSIGNABLE_FIELDS:
        raise ValueError(
            f"{name} cannot be covered: the proxy removes or rewrites it (hop-by-hop), or it "
            "carries the signature"
        )
    for key, value in params.items():
        if key in {"req", "tr"}:
            raise ValueError(
                f"the {key} parameter applies to responses or trailers; the proxy signs requests"
            )
        if key not in {"sf", "key", "bs"}:
            raise ValueError(f"unknown parameter {key} (fields take sf, key or bs)")
        if key in {"sf", "bs"} and value is not True:
            raise ValueError(f"{key} is a flag: write {name};{key}")
        if key == "key" and not isinstance(value, str):
            raise ValueError(f'key takes a string: {name};key="member"')
    if "bs" in params and ("sf" in params or "key" in params):
        raise ValueError(f"{name}: bs cannot be combined with sf or key (RFC 9421 2.1.3)")
    kind = structured_type(name, structured)
    if ("sf" in params or "key" in params) and kind is None:
        raise ValueError(
            f"{name} has no known structured type: declare it under structured_fields "
            "(item, list or dictionary) to use sf or key"
        )
    if "key" in params and kind != "dictionary":
        raise ValueError(f"{name} is a structured {kind}; key applies to dictionaries only")


def structured_type(name: str, declared: Mapping[str, StructuredType]) -> StructuredType | None:
    return declared.get(name) or REGISTERED_STRUCTURED_FIELDS.get(name)


def _form_encode(text: str) -> str:
    """RFC 9421 2.2.8: percent-encode with the application/x-www-form-urlencoded set, spaces as
    %20 (WHATWG URL: everything but ASCII alphanumerics and *-._ is encoded)."""
    return quote(text, safe="*").replace("~", "%7E")


@dataclass(frozen=True, slots=True)
class RequestParts:
    """The request-derived values, computed once per request."""

    method: str
    scheme: str
    authority: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]

    @classmethod
    def of(cls, request: UpstreamRequest) -> RequestParts:
        scheme = request.scheme.lower()
        # RFC 9421 2.2.3: lower case, the default port left out.
        authority = host_to_sign(scheme, request.headers.get("Host", request.host).strip().lower())
        return cls(
            method=request.method,
            scheme=scheme,
            authority=authority,
            path=request.path or "/",
            query=request.query,
            headers=request.headers,
        )


def component_value(
    component: Component,
    parts: RequestParts,
    structured: Mapping[str, StructuredType],
) -> str:
    """The component's value in the base (RFC 9421 2.1, 2.2). Raises MissingComponent."""
    name = component.name
    if name == "@method":
        return parts.method
    if name == "@authority":
        return parts.authority
    if name == "@scheme":
        return parts.scheme
    if name == "@path":
        return parts.path
    if name == "@query":
        return f"?{parts.query}"
    if name == "@request-target":
        return f"{parts.path}?{parts.query}" if parts.query else parts.path
    if name == "@target-uri":
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{parts.authority}{parts.path}{query}"
    if name == "@query-param":
        return _query_param(str(component.param("name")), parts.query)
    return _field_value(component, parts.headers, structured)


def _query_param(name: str, query: str) -> str:
    values = [
        value
        for key, value in parse_qsl(query, keep_blank_values=True, errors="replace")
        if _form_encode(key) == name
    ]
    if not values:
        raise MissingComponent(
            f'the query has no parameter {name!r} (covered: @query-param;name="{name}")'
        )
    if len(values) > 1:
        raise MissingComponent(
            f"the query has the parameter {name!r} {len(values)} times; RFC 9421 2.2.8 forbids "
            "signing a repeated parameter"
        )
    return _form_encode(values[0])


def _field_value(
    component: Component,
    headers: CIMultiDictProxy[str],
    structured: Mapping[str, StructuredType],
) -> str:
    name = component.name
    lines = headers.getall(name, None)
    if lines is None:
        raise MissingComponent(f"the request has no {name} header, which this route signs")
    # RFC 9421 2.1: each line trimmed, obs-fold as one space, lines joined by ", ".
    values = [" ".join(part.strip() for part in line.strip().splitlines()) for line in lines]
    if component.param("bs"):
        return ", ".join(ser_item(value.encode()) for value in values)
    key = component.param("key")
    if not component.param("sf") and key is None:
        return ", ".join(values)
    kind = structured_type(name, structured)
    assert kind is not None  # checked at config load
    try:
        parsed = http_sf.parse(", ".join(values).encode(), tltype=kind)
    except http_sf.StructuredFieldError as err:
        raise MissingComponent(f"the {name} header is not a structured {kind}: {err}") from None
    if key is None:
        return http_sf.ser(parsed)
    assert isinstance(parsed, dict)
    if key not in parsed:
        raise MissingComponent(f"the {name} header has no member {key!r}, which this route signs")
    return ser_item_or_inner_list(parsed[key])


SignatureParams = dict[str, int | str]


def signature_params_value(components: Sequence[Component], params: SignatureParams) -> str:
    """The `@signature-params` value, which is also the Signature-Input member's value."""
    inner_params: ParamsType = dict(params)
    return ser_innerlist(([c.item for c in components], inner_params))


def signature_base(
    components: Sequence[Component],
    request: UpstreamRequest,
    params_value: str,
    structured: Mapping[str, StructuredType],
) -> str:
    """RFC 9421 2.5: one `identifier: value` line per covered component, then the parameters."""
    parts = RequestParts.of(request)
    lines = [f"{c.identifier}: {component_value(c, parts, structured)}" for c in components]
    lines.append(f'"@signature-params": {params_value}')
    return "\n".join(lines)
