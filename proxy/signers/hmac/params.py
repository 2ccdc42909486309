"""Query strings and urlencoded forms as `scheme: hmac` reads and edits them.

Reading follows form rules: segments split on `&` (empty ones skipped), `+` is a space, `%XX`
escapes are UTF-8 (invalid sequences become U+FFFD), a segment without `=` has the empty value.
Editing keeps every other segment's bytes as the app sent them: a placed parameter replaces the
first one of that decoded name in place and drops the rest, or is appended.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote, unquote_to_bytes

Source = Literal["query", "form", "query+form"]
SortOrder = Literal["name", "name_ci", "none"]
ParamEncoding = Literal["rfc3986", "as_sent", "none"]
SOURCES: Final = ("query", "form", "query+form")
SORTS: Final = ("name", "name_ci", "none")
PARAM_ENCODINGS: Final = ("rfc3986", "as_sent", "none")


@dataclass(frozen=True, slots=True)
class Param:
    raw_name: str
    raw_value: str
    name: str
    value: str


def form_decode(component: str) -> str:
    # Bytes, so raw UTF-8, `%XX` escapes and undecodable raw bytes (surrogate-escaped by
    # aiohttp) join into one sequence, decoded once.
    raw = component.encode("utf-8", "surrogateescape").replace(b"+", b" ")
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def rfc3986(text: str | bytes) -> str:
    return quote(text, safe="")


def parse_params(raw: str) -> list[Param]:
    params = []
    for segment in raw.split("&"):
        if segment:
            name, _, value = segment.partition("=")
            params.append(Param(name, value, form_decode(name), form_decode(value)))
    return params


def first_value(params: Sequence[Param], name: str) -> str:
    return next((p.value for p in params if p.name == name), "")


def strip_params(raw: str, names: frozenset[str]) -> str:
    kept = [s for s in raw.split("&") if s and form_decode(s.partition("=")[0]) not in names]
    return "&".join(kept)


def set_params(raw: str, items: Iterable[tuple[str, bytes]]) -> str:
    """`raw` with each (name, value) placed: replaces the first of that name, drops the rest."""
    segments = [s for s in raw.split("&") if s]
    for name, value in items:
        placed = f"{rfc3986(name)}={rfc3986(value)}"
        out: list[str] = []
        for segment in segments:
            if form_decode(segment.partition("=")[0]) == name:
                if placed:
                    out.append(placed)
                    placed = ""
                continue
            out.append(segment)
        if placed:
            out.append(placed)
        segments = out
    return "&".join(segments)


def render_params(
    params: Iterable[Param],
    *,
    sort: SortOrder,
    encode: ParamEncoding,
    kv: str,
    sep: str,
    trailing_sep: bool,
    exclude: frozenset[str],
) -> str:
    chosen = [p for p in params if p.name not in exclude]
    if sort == "name":
        chosen.sort(key=lambda p: p.name)
    elif sort == "name_ci":
        chosen.sort(key=lambda p: p.name.upper())
    if encode == "rfc3986":
        pairs = [(rfc3986(p.name), rfc3986(p.value)) for p in chosen]
    elif encode == "as_sent":
        pairs = [(p.raw_name, p.raw_value) for p in chosen]
    else:
        pairs = [(p.name, p.value) for p in chosen]
    text = sep.join(f"{name}{kv}{value}" for name, value in pairs)
    return text + sep if trailing_sep and pairs else text
