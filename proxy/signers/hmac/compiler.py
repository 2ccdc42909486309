"""Templates -> functions of one request's `Env`, checked against what their place may read.

A compiled template is a closure over getters; a template that reads nothing of the request
(`{secret}&`, `{key_id}`) is evaluated here, once. Every name, filter, function and argument is
checked now, so a config that loads cannot fail on a typo at request time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, cast

from proxy.http import DEFAULT_PORTS, host_to_sign
from proxy.signers.base import UpstreamRequest
from proxy.signers.hmac.functions import FILTERS
from proxy.signers.hmac.params import (
    PARAM_ENCODINGS,
    SORTS,
    SOURCES,
    Param,
    ParamEncoding,
    SortOrder,
    first_value,
    parse_params,
    render_params,
)
from proxy.signers.hmac.template import Call, Ref, TemplateSyntaxError, Text, parse_template

URLENCODED: Final = "application/x-www-form-urlencoded"


class TemplateError(ValueError):
    """A template that cannot be compiled. Never holds a secret value."""


class Env:
    """One request being signed: the request as it stands, the vars drawn so far, and caches of
    its parsed query and form (keyed by the exact text they were parsed from)."""

    __slots__ = ("_form", "_query", "request", "signature", "vars")

    def __init__(self, request: UpstreamRequest) -> None:
        self.request = request
        self.vars: dict[str, bytes] = {}
        self.signature = b""
        self._query: tuple[str, list[Param]] = ("", [])
        self._form: tuple[bytes, list[Param]] = (b"", [])

    def query_params(self) -> list[Param]:
        query = self.request.query
        if query != self._query[0]:
            self._query = (query, parse_params(query))
        return self._query[1]

    def form_params(self) -> list[Param]:
        body = self.request.body or b""
        if not is_form(self.request):
            return []
        if body != self._form[0]:
            self._form = (body, parse_params(body.decode("utf-8", "surrogateescape")))
        return self._form[1]


Getter = Callable[[Env], bytes]


def is_form(request: UpstreamRequest) -> bool:
    media_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return media_type == URLENCODED


def _port(request: UpstreamRequest) -> str:
    rest = request.host[len(request.hostname) :]
    return rest[1:] if rest.startswith(":") else DEFAULT_PORTS.get(request.scheme, "")


def _authority(request: UpstreamRequest) -> str:
    return host_to_sign(request.scheme, request.host)


def _target(request: UpstreamRequest) -> str:
    return f"{request.path}?{request.query}" if request.query else request.path


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


REQUEST_NAMES: Final[dict[str, Getter]] = {
    "method": lambda e: e.request.method.encode("ascii"),
    "scheme": lambda e: e.request.scheme.encode("ascii"),
    "host": lambda e: _text(e.request.hostname),
    "port": lambda e: _port(e.request).encode("ascii"),
    "authority": lambda e: _text(_authority(e.request)),
    "path": lambda e: _text(e.request.path),
    "query": lambda e: _text(e.request.query),
    "target": lambda e: _text(_target(e.request)),
    "url": lambda e: _text(f"{e.request.scheme}://{_authority(e.request)}{_target(e.request)}"),
    "body": lambda e: e.request.body or b"",
}
ARG_NAMES: Final = ("header", "query_param", "form_param")
FUNCTIONS: Final = ("params",)
BUILTIN_NAMES: Final = frozenset(
    {*REQUEST_NAMES, *ARG_NAMES, *FUNCTIONS, "key_id", "secret", "signature"}
)


@dataclass(frozen=True)
class Scope:
    """What a template in one place of the config may read."""

    place: str  # for messages: "sign.message", "before_sign", ...
    vars: frozenset[str]  # visible vars
    hidden: Mapping[str, str] = field(default_factory=dict)  # var -> why it is not visible here
    key_id: bytes | None = field(default=None, repr=False)
    secret: bytes | None = field(default=None, repr=False)  # only sign.key gets it
    signature: bool = False  # only after_sign


@dataclass(frozen=True)
class Compiled:
    render: Getter = field(repr=False)
    reads_body: bool
    # The value, when the template reads nothing of the request (for sign.key: the key).
    constant: bytes | None = field(repr=False)


def compile_template(source: str, scope: Scope) -> Compiled:
    try:
        parts = parse_template(source)
    except TemplateSyntaxError as err:
        raise TemplateError(str(err)) from None
    compiled: list[tuple[Getter, bytes | None, bool]] = []  # getter, constant value, reads body
    for part in parts:
        if isinstance(part, Text):
            value = _text(part.value)
            compiled.append((_const(value), value, False))
        else:
            compiled.append(_compile_part(part, scope))
    reads_body = any(body for _, _, body in compiled)
    getters = [getter for getter, _, _ in compiled]
    constants = [value for _, value, _ in compiled]
    render = _join(getters)
    constant: bytes | None = None
    if all(value is not None for value in constants):
        constant = b"".join(v for v in constants if v is not None)
        render = _const(constant)
    return Compiled(render, reads_body, constant)


def _const(value: bytes) -> Getter:
    return lambda e: value


def _join(getters: list[Getter]) -> Getter:
    if not getters:
        return _const(b"")
    if len(getters) == 1:
        return getters[0]
    return lambda e: b"".join([getter(e) for getter in getters])


def _compile_part(part: Ref | Call, scope: Scope) -> tuple[Getter, bytes | None, bool]:
    if isinstance(part, Call):
        getter, reads_body = _compile_call(part)
        constant = None
    else:
        getter, constant, reads_body = _compile_ref(part, scope)
    for name in part.filters:
        function = FILTERS.get(name)
        if function is None:
            known = ", ".join(FILTERS)
            raise TemplateError(f"unknown filter |{name} in {part} (known: {known})")
        if constant is not None:
            try:
                constant = function(constant)
            except ValueError as err:
                raise TemplateError(f"{part}: {err}") from None
            getter = _const(constant)
        else:
            getter = _filtered(getter, function)
    return getter, constant, reads_body


def _filtered(getter: Getter, function: Callable[[bytes], bytes]) -> Getter:
    return lambda e: function(getter(e))


def _compile_ref(ref: Ref, scope: Scope) -> tuple[Getter, bytes | None, bool]:
    name, arg = ref.name, ref.arg
    if arg is not None:
        if name == "header":
            return (lambda e: _text(", ".join(e.request.headers.getall(arg, ())))), None, False
        if name == "query_param":
            return (lambda e: _text(first_value(e.query_params(), arg))), None, False
        if name == "form_param":
            return (lambda e: _text(first_value(e.form_params(), arg))), None, True
        raise TemplateError(f"{{{name}:...}}: only header:, query_param: and form_param: take ':'")
    if name in ARG_NAMES:
        raise TemplateError(f"{{{name}}} needs a name: {{{name}:Name}}")
    if name in REQUEST_NAMES:
        return REQUEST_NAMES[name], None, name == "body"
    if name == "secret":
        if scope.secret is None:
            raise TemplateError(f"{{secret}} is only allowed in sign.key, not in {scope.place}")
        return _const(scope.secret), scope.secret, False
    if name == "key_id":
        if scope.key_id is None:
            raise TemplateError("{key_id} is used but the signer has no key_id")
        return _const(scope.key_id), scope.key_id, False
    if name == "signature":
        if not scope.signature:
            raise TemplateError(
                f"{{signature}} is only allowed in after_sign, not in {scope.place}"
            )
        return (lambda e: e.signature), None, False
    if name in scope.vars:
        return (lambda e: e.vars[name]), None, False
    if name in scope.hidden:
        raise TemplateError(f"{{{name}}} cannot be used in {scope.place}: {scope.hidden[name]}")
    known = ", ".join(sorted({*REQUEST_NAMES, "key_id", *scope.vars}))
    raise TemplateError(f"unknown name {{{name}}} (known here: {known}; and header:, "
                        "query_param:, form_param:, params(...))")  # fmt: skip


_PARAMS_DEFAULTS: Final[dict[str, object]] = {
    "from": "query",
    "sort": "name",
    "encode": "rfc3986",
    "kv": "=",
    "sep": "&",
    "trailing_sep": False,
    "exclude": (),
}
_CHOICES: Final = {"from": SOURCES, "sort": SORTS, "encode": PARAM_ENCODINGS}


def _compile_call(call: Call) -> tuple[Getter, bool]:
    if call.function not in FUNCTIONS:
        raise TemplateError(f"unknown function {call.function}(...) (known: params)")
    args = dict(_PARAMS_DEFAULTS)
    for key, value in call.args:
        if key not in args:
            raise TemplateError(f"params(): unknown argument {key} (known: {', '.join(args)})")
        expected = type(_PARAMS_DEFAULTS[key])
        if not isinstance(value, expected):
            kind = {str: "a word or quoted string", bool: "true or false", tuple: "a [list]"}
            raise TemplateError(f"params(): {key} must be {kind[expected]}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise TemplateError(f"params(): {key}={value} (choose from {'|'.join(_CHOICES[key])})")
        args[key] = value
    source = str(args["from"])
    sort = cast(SortOrder, args["sort"])
    encode = cast(ParamEncoding, args["encode"])
    kv, sep, trailing = str(args["kv"]), str(args["sep"]), bool(args["trailing_sep"])
    exclude = frozenset(cast(tuple[str, ...], args["exclude"]))
    if source == "query":
        select: Callable[[Env], list[Param]] = Env.query_params
    elif source == "form":
        select = Env.form_params
    else:
        select = lambda e: [*e.query_params(), *e.form_params()]  # noqa: E731

    def render(e: Env) -> bytes:
        text = render_params(
            select(e), sort=sort, encode=encode, kv=kv, sep=sep, trailing_sep=trailing,
            exclude=exclude,
        )  # fmt: skip
        return _text(text)

    return render, source != "query"
