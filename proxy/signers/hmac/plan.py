"""An `HmacConfig` compiled into a `Plan`: everything decided once per config load.

Scopes follow the four phases: `now`/`random` vars and `key_id` are visible everywhere;
`template` vars only after before_sign (and only earlier ones inside vars); `{secret}` only in
sign.key; `{signature}` only in after_sign.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from proxy.signers.hmac.compiler import (
    BUILTIN_NAMES,
    Compiled,
    Scope,
    TemplateError,
    compile_template,
)
from proxy.signers.hmac.functions import (
    ALGORITHMS,
    DIGESTS,
    ENCODINGS,
    NOW_FORMATS,
    RANDOM_KINDS,
)
from proxy.signers.hmac.spec import HmacSpec, Placements
from proxy.signers.hmac.template import Call, Ref, TemplateSyntaxError, Text, parse_template

_VAR_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# C0 controls but tab, and DEL: what a header value must not hold (RFC 9110 5.5).
HEADER_UNSAFE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SAFE_ENCODINGS: Final = frozenset({"hex", "b64", "b64url", "pct"})
_RAW_FILTERS: Final = frozenset({*DIGESTS, "b64decode", "hexdecode"})
Kind = Literal["query", "form", "headers"]
KINDS: Final[tuple[Kind, ...]] = ("query", "form", "headers")


class PlanError(ValueError):
    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(f"{'.'.join(path)}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class Placement:
    kind: Kind
    name: str
    value: Compiled
    where: str  # "after_sign.headers.Authorization", for errors and --explain


@dataclass(frozen=True, slots=True)
class Phase:
    """before_sign or after_sign: its placements, in the order they are applied."""

    name: str
    query: tuple[Placement, ...]
    form: tuple[Placement, ...]
    headers: tuple[Placement, ...]

    @property
    def placements(self) -> tuple[Placement, ...]:
        return self.query + self.form + self.headers


@dataclass(frozen=True, slots=True)
class TemplateVar:
    name: str
    template: Compiled
    remove_prefix: bytes
    digest: Callable[[bytes], bytes] | None
    encode: Callable[[bytes], bytes] | None


@dataclass(frozen=True, slots=True)
class Plan:
    now_vars: tuple[tuple[str, Callable[[int], str]], ...]
    random_vars: tuple[tuple[str, Callable[[], str]], ...]
    template_vars: tuple[TemplateVar, ...]
    strip_headers: tuple[str, ...]
    strip_params: frozenset[str]
    before_sign: Phase | None  # None: nothing to place
    after_sign: Phase | None
    key: Compiled
    keyed_mac: hmac.HMAC | None = field(repr=False)  # a constant key: keyed once, copied
    digest_name: str
    message: Compiled
    encode: Callable[[bytes], bytes]
    key_shape: str
    needs_body: bool


def build_plan(config: HmacSpec) -> Plan:
    key_id = config.key_id.reveal().encode() if config.key_id is not None else None
    drawn = [name for name, spec in config.vars.items() if spec.template is None]
    templated = [name for name, spec in config.vars.items() if spec.template is not None]
    for name in config.vars:
        if not _VAR_NAME.match(name):
            raise PlanError(("vars", name), "a var name is a letter or _ then letters, digits, _")
        if name in BUILTIN_NAMES:
            raise PlanError(("vars", name), f"{name} is a built-in name; a var may not shadow it")

    def scope(place: str, visible: list[str], hidden: dict[str, str], **kw: object) -> Scope:
        return Scope(place, frozenset(visible), hidden, key_id=key_id, **kw)  # type: ignore[arg-type]

    after_before = "template vars are rendered after before_sign"
    template_vars = []
    for index, name in enumerate(templated):
        spec = config.vars[name]
        later = {n: "it is defined later in vars" for n in templated[index:]}
        where = ("vars", name, "template")
        assert spec.template is not None
        compiled = _compile(
            spec.template, scope(f"vars.{name}", [*drawn, *templated[:index]], later), where
        )
        template_vars.append(
            TemplateVar(
                name,
                compiled,
                (spec.remove_prefix or "").encode(),
                DIGESTS[spec.digest] if spec.digest else None,
                ENCODINGS[spec.encode] if spec.encode else None,
            )
        )
    every = [*drawn, *templated]
    raw_vars = frozenset(
        name for name, spec in config.vars.items() if spec.digest and not spec.encode
    )
    before = _placements(
        config.before_sign,
        "before_sign",
        scope("before_sign", drawn, dict.fromkeys(templated, after_before)),
        raw_vars,
    )
    secret = config.secret.reveal().encode()
    key = _compile(config.sign.key, scope("sign.key", every, {}, secret=secret), ("sign", "key"))
    if not any(isinstance(p, Ref) and p.name == "secret" for p in parse_template(config.sign.key)):
        # A key written out in the template would be config text: shown by repr, `check` and
        # `sign --explain`, never masked. Only `secret` is handled as a secret.
        raise PlanError(("sign", "key"), "sign.key must use {secret}: the key is the secret")
    message = _compile(config.sign.message, scope("sign.message", every, {}), ("sign", "message"))
    after = _placements(
        config.after_sign, "after_sign", scope("after_sign", every, {}, signature=True), raw_vars
    )
    digest_name = ALGORITHMS[config.sign.algorithm]
    keyed_mac = None
    if key.constant is not None:
        keyed_mac = hmac.new(key.constant, digestmod=getattr(hashlib, digest_name))
        key_shape = f"{len(key.constant)} bytes, from {config.sign.key}"
    else:
        key_shape = f"computed per request from {config.sign.key}"
    templates = [
        key,
        message,
        *(p.value for phase in (before, after) if phase for p in phase.placements),
        *(v.template for v in template_vars),
    ]
    needs_body = (
        any(t.reads_body for t in templates)
        or bool(config.before_sign.form)
        or bool(config.after_sign.form)
    )
    return Plan(
        now_vars=tuple(
            (name, NOW_FORMATS[spec.now]) for name, spec in config.vars.items() if spec.now
        ),
        random_vars=tuple(
            (name, RANDOM_KINDS[spec.random]) for name, spec in config.vars.items() if spec.random
        ),
        template_vars=tuple(template_vars),
        strip_headers=tuple(config.strip),
        strip_params=frozenset(config.strip),
        before_sign=before,
        after_sign=after,
        key=key,
        keyed_mac=keyed_mac,
        digest_name=digest_name,
        message=message,
        encode=ENCODINGS[config.sign.encode],
        key_shape=key_shape,
        needs_body=needs_body,
    )


def _compile(source: str, scope: Scope, path: tuple[str, ...]) -> Compiled:
    try:
        return compile_template(source, scope)
    except TemplateError as err:
        raise PlanError(path, str(err)) from None


def _placements(
    spec: Placements, phase: str, scope: Scope, raw_vars: frozenset[str]
) -> Phase | None:
    kinds: dict[str, tuple[Placement, ...]] = {}
    for kind in KINDS:
        kinds[kind] = tuple(
            Placement(
                kind, name, _compile(source, scope, (phase, kind, name)), f"{phase}.{kind}.{name}"
            )
            for name, source in getattr(spec, kind).items()
        )
    for name, source in spec.headers.items():
        _check_header_template(source, scope, raw_vars, (phase, "headers", name))
    if not any(kinds.values()):
        return None
    return Phase(phase, kinds["query"], kinds["form"], kinds["headers"])


def _check_header_template(
    source: str, scope: Scope, raw_vars: frozenset[str], path: tuple[str, ...]
) -> None:
    """What a header template puts in verbatim must be header-safe, and raw bytes (a digest)
    must be encoded: found now, not per request. (Request data is checked when placed.)"""
    try:
        parts = parse_template(source)
    except TemplateSyntaxError:
        return  # reported with its position by the compiler
    for part in parts:
        if isinstance(part, Text) and (found := HEADER_UNSAFE.search(part.value)):
            raise PlanError(path, f"a header value cannot hold U+{ord(found.group()):04X}")
        if isinstance(part, Ref | Call) and _yields_raw_bytes(part, raw_vars):
            raise PlanError(path, f"{part} is raw bytes: encode it for a header (|hex or |b64)")
        if isinstance(part, Ref) and part.name == "key_id" and scope.key_id is not None:
            found = HEADER_UNSAFE.search(scope.key_id.decode("utf-8", "replace"))
            if found and not set(part.filters) & _SAFE_ENCODINGS:
                raise PlanError(
                    ("key_id",),
                    f"a control character (U+{ord(found.group()):04X}) is not allowed: "
                    f"{'.'.join(path)} sends key_id in a header",
                )


def _yields_raw_bytes(part: Ref | Call, raw_vars: frozenset[str]) -> bool:
    raw = isinstance(part, Ref) and part.name in raw_vars
    for name in part.filters:
        if name in _RAW_FILTERS:
            raw = True
        elif name in _SAFE_ENCODINGS:
            raw = False
    return raw
